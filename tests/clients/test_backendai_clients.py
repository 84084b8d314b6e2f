"""The Backend.AI v2 dialect, tested with the real clients: backend.ai-client 1.1.11 and 1.4.2
(SDK sync and async, and the `backend.ai` CLI) and sorna-client 0.9.8, against a gateway process
with real containers."""
from __future__ import annotations

import json
import re
import uuid

import docker
import pytest

from tests.clients.v2util import Keys, create_keys, run_cli, run_py
from tests.conftest import ProcessGateway

pytestmark = pytest.mark.clients


@pytest.fixture(scope="module")
def alice(process_gateway: ProcessGateway) -> Keys:
    return create_keys("alice-" + uuid.uuid4().hex[:6])


@pytest.fixture(scope="module")
def bob(process_gateway: ProcessGateway) -> Keys:
    return create_keys("bob-" + uuid.uuid4().hex[:6])


def containers(gw: ProcessGateway) -> list:
    return docker.from_env().containers.list(all=True, filters={"label": f"org.kge.gateway={gw.gateway_id}"})


def test_sdk_1_1_11_sync_lifecycle(process_gateway: ProcessGateway, alice: Keys) -> None:
    out = run_py("bai-1.1.11", """
        import json, time
        from ai.backend.client.kernel import Kernel
        from ai.backend.client.exceptions import BackendAPIError
        k = Kernel.get_or_create('python3', client_token='sync-111', envs={'GREETING': 'hello'})
        again = Kernel.get_or_create('python3', client_token='sync-111')
        try:
            Kernel.get_or_create('bash', client_token='sync-111'); other_lang = None
        except BackendAPIError as e:
            other_lang = e.args[0]
        q = k.execute(code='import os\\nprint(os.environ["GREETING"])\\n6*7', mode='query')
        err = k.execute(code='1/0', mode='query')
        w = k.execute(code='name = input("who? ")\\nprint("hi", name)', mode='query')
        i = k.execute(code='bob', run_id=w['runId'], mode='input')
        # a long run answers 'continued' and resumes
        c1 = k.execute(code='import time\\nfor n in range(5):\\n    print(n, flush=True); time.sleep(1)', mode='query')
        runs = [c1]
        while runs[-1]['status'] == 'continued':
            runs.append(k.execute(code='', run_id=c1['runId'], mode='continue'))
        info = k.get_info()
        comp = k.complete('impo')
        logs = k.get_logs()
        k.restart()
        after = k.execute(code='print("name" in dir())', mode='query')
        stats = k.destroy()
        print(json.dumps(dict(id=k.kernel_id, created=k.created, again=again.created, same=again.kernel_id == k.kernel_id,
                              other_lang=other_lang, q=q, err=err, w=w, i=i, runs=runs, info=info, comp=comp,
                              logs=logs, after=after, stats=stats)))
    """, process_gateway.url, alice)
    assert out["created"] is True and out["again"] is False and out["same"]
    assert out["other_lang"] == 400
    assert out["q"]["status"] == "finished" and out["q"]["exitCode"] == 0
    assert out["q"]["console"] == [["stdout", "hello\n42\n"]]
    assert out["err"]["exitCode"] == 1 and "ZeroDivisionError" in out["err"]["console"][0][1]
    assert out["w"]["status"] == "waiting-input" and out["w"]["console"] == [["stdout", "who? "]]
    assert out["i"]["status"] == "finished" and "hi bob" in out["i"]["console"][0][1]
    statuses = [r["status"] for r in out["runs"]]
    assert statuses[0] == "continued" and statuses[-1] == "finished"
    assert "".join(item[1] for r in out["runs"] for item in r["console"]) == "0\n1\n2\n3\n4\n"
    info = out["info"]
    for key in ("lang", "age", "idle", "queryTimeout", "idleTimeout", "memoryLimit", "maxCpuCredit",
                "numQueriesExecuted", "memoryUsed", "cpuCreditUsed"):
        assert key in info, key
    assert info["numQueriesExecuted"] == 4 and info["memoryUsed"] > 1000 and info["cpuCreditUsed"] > 0
    assert info["age"] > 0 and info["lang"] == "python3"
    assert "import" in out["comp"]["result"]
    assert isinstance(out["logs"]["result"]["logs"], str)
    assert out["after"]["console"] == [["stdout", "False\n"]]
    assert out["stats"]["stats"]["num_queries"] == 5
    assert not [c for c in containers(process_gateway) if c.labels.get("org.kge.kernel.id") == out["id"]]


def test_sdk_1_1_11_async_and_upload_and_batch(process_gateway: ProcessGateway, alice: Keys, tmp_path) -> None:
    (tmp_path / "main.py").write_text("print('batch says hi')\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "data.txt").write_text("payload\n")
    out = run_py("bai-1.1.11", f"""
        import asyncio, json
        from ai.backend.client.asyncio.kernel import AsyncKernel
        from ai.backend.client.kernel import Kernel
        async def main():
            k = await AsyncKernel.get_or_create('python3', client_token='async-111')
            r = await k.execute(code='print(sum(range(10)))', mode='query')
            await k.destroy()
            return r
        r = asyncio.get_event_loop().run_until_complete(main())
        k = Kernel.get_or_create('python3', client_token='batch-111')
        up = k.upload(['{tmp_path}/main.py', '{tmp_path}/pkg/data.txt'], basedir='{tmp_path}')
        b = k.execute(code='', mode='batch', opts={{'build': '*', 'exec': '*'}})
        cat = k.execute(code='print(open("pkg/data.txt").read().strip())', mode='query')
        k.destroy()
        print(json.dumps(dict(r=r, up=up.status, b=b, cat=cat)))
    """, process_gateway.url, alice)
    assert out["r"]["console"] == [["stdout", "45\n"]]
    assert out["up"] == 204
    assert out["b"]["status"] == "finished" and out["b"]["exitCode"] == 0
    assert out["b"]["console"] == [["stdout", "batch says hi\n"]]
    assert out["cat"]["console"] == [["stdout", "payload\n"]]


def test_sdk_1_4_2_resources_hold_inside_the_container(process_gateway: ProcessGateway, alice: Keys) -> None:
    out = run_py("bai-1.4.2", """
        import json
        from ai.backend.client.session import Session
        with Session() as s:
            k = s.Kernel.get_or_create('python:3.6', client_token='res-142', envs={'MODE': 'test'},
                                       resources={'ram': 128, 'cpu': 0.5})
            r = k.execute(code=(
                "import os\\n"
                "mem = int(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read())\\n"
                "q, p = [int(x) for x in (open('/sys/fs/cgroup/cpu/cpu.cfs_quota_us').read(), open('/sys/fs/cgroup/cpu/cpu.cfs_period_us').read())]\\n"
                "print(mem, q / p, os.environ['MODE'])"), mode='query')
            hog = k.execute(code='x = bytearray(400 * 2**20)\\nprint("allocated")', mode='query')
            info = k.get_info()
            k.destroy()
        print(json.dumps(dict(r=r, hog=hog, info=info)))
    """, process_gateway.url, alice)
    mem, cores, mode = out["r"]["console"][0][1].split()
    assert int(mem) == 128 * 2**20 and float(cores) == 0.5 and mode == "test"
    text = "".join(item[1] for item in out["hog"]["console"] if isinstance(item[1], str))
    assert "allocated" not in text  # 400 MB cannot fit in 128 MiB
    assert out["info"]["memoryLimit"] == 128 * 1024


def test_sdk_1_4_2_async(process_gateway: ProcessGateway, alice: Keys) -> None:
    out = run_py("bai-1.4.2", """
        import asyncio, json
        from ai.backend.client.session import AsyncSession
        async def main():
            async with AsyncSession() as s:
                k = await s.Kernel.get_or_create('python3', client_token='async-142')
                r = await k.execute(code='print("async ok")', mode='query')
                await k.destroy()
                return r
        print(json.dumps(asyncio.run(main())))
    """, process_gateway.url, alice)
    assert out["console"] == [["stdout", "async ok\n"]]


def test_sdk_1_4_2_upload_into_a_sub_directory(process_gateway: ProcessGateway, alice: Keys, tmp_path) -> None:
    """1.4.2 sends multipart filenames percent-encoded (updir%2Fup2.txt): the file must land in
    /home/work/updir/up2.txt, with the same path checks."""
    (tmp_path / "updir").mkdir()
    (tmp_path / "updir" / "up2.txt").write_text("in a sub-directory\n")
    out = run_py("bai-1.4.2", f"""
        import json
        from ai.backend.client.session import Session
        with Session() as s:
            k = s.Kernel.get_or_create('python3', client_token='upload-142')
            k.upload(['{tmp_path}/updir/up2.txt'], basedir='{tmp_path}')
            r = k.execute(code='import os; print(open("updir/up2.txt").read(), end=""); print(os.listdir("."))',
                          mode='query')
            k.destroy()
        print(json.dumps(r))
    """, process_gateway.url, alice)
    assert out["console"][0][1].startswith("in a sub-directory\n"), out
    assert "updir%2Fup2.txt" not in out["console"][0][1]


def test_sorna_client_0_9_8(process_gateway: ProcessGateway, alice: Keys) -> None:
    out = run_py("sorna-0.9.8", """
        import json
        from sorna.kernel import Kernel
        k = Kernel.get_or_create('python3', client_token='sorna-098')
        r = k.execute(code='print("from sorna")', mode='query')
        k.restart()
        k.destroy()
        print(json.dumps(r))
    """, process_gateway.url, alice)
    assert out["console"] == [["stdout", "from sorna\n"]] and out["status"] == "finished"


def test_cli_run_ps_logs_terminate(process_gateway: ProcessGateway, alice: Keys) -> None:
    token = "cli-" + uuid.uuid4().hex[:8]
    run = run_cli(["run", "-t", token, "python3", "-c", "print('cli says hi')"], process_gateway.url, alice)
    assert "cli says hi" in run.stdout
    ps = run_cli(["ps"], process_gateway.url, alice)
    assert token in ps.stdout and "RUNNING" in ps.stdout
    logs = run_cli(["logs", token], process_gateway.url, alice)
    assert logs.returncode == 0
    run_cli(["terminate", token], process_gateway.url, alice)
    assert token not in run_cli(["ps"], process_gateway.url, alice).stdout
    # The id `run` prints for a temporary session is the one `ps` lists and `terminate` takes (before: run
    # printed the kernel's UUID, ps the client token), with either CLI.
    for client in ("bai-1.4.2", "bai-1.1.11"):
        run = run_cli(["run", "python3", "-c", "print(2 + 3)"], process_gateway.url, alice, client=client)
        assert "5" in run.stdout
        (sess,) = re.findall(r"Session (\S+) is ready", run.stdout + run.stderr)
        listed = run_cli(["ps"], process_gateway.url, alice, client=client).stdout
        assert re.search(rf"^{re.escape(sess)}\s+python3\s", listed, re.M), (sess, listed)
        run_cli(["terminate", sess], process_gateway.url, alice, client=client)
        assert sess not in run_cli(["ps"], process_gateway.url, alice, client=client).stdout


def test_folders_mounts_and_data_outliving_the_kernel(process_gateway: ProcessGateway, alice: Keys, bob: Keys, tmp_path) -> None:
    (tmp_path / "input.csv").write_text("a,b\n1,2\n")
    url = process_gateway.url
    run_cli(["vfolder", "create", "mydata"], url, alice)
    run_cli(["vfolder", "create", "pkgs"], url, alice)
    assert "mydata" in run_cli(["vfolder", "list"], url, alice).stdout
    assert "Number of files: 0" in run_cli(["vfolder", "info", "mydata"], url, alice).stdout
    run_cli(["vfolder", "upload", "mydata", "input.csv"], url, alice, cwd=tmp_path)
    assert "Number of files: 1" in run_cli(["vfolder", "info", "mydata"], url, alice).stdout
    # the 1.4.2 CLI downloads it again (before: 404 "no such endpoint")
    (tmp_path / "back").mkdir()
    run_cli(["vfolder", "download", "mydata", "input.csv"], url, alice, cwd=tmp_path / "back")
    assert (tmp_path / "back" / "input.csv").read_text() == "a,b\n1,2\n"
    missing = run_cli(["vfolder", "download", "mydata", "nope.csv"], url, alice, cwd=tmp_path / "back", check=False)
    assert missing.returncode != 0 or "404" in missing.stdout + missing.stderr
    assert not (tmp_path / "back" / "nope.csv").exists()
    out = run_py("bai-1.4.2", f"""
        import json
        from ai.backend.client.session import Session
        from ai.backend.client.exceptions import BackendAPIError
        res = {{}}
        with Session() as s:
            s.VFolder('mydata').upload(['{tmp_path}/input.csv'], basedir='{tmp_path}')
            k = s.Kernel.get_or_create('python3', client_token='mount-142', mounts=['mydata', 'pkgs:.local/lib/extra'])
            res['run'] = k.execute(code=(
                "import os\\n"
                "print(open('/home/work/mydata/input.csv').read().splitlines()[1])\\n"
                "open('/home/work/mydata/result.txt', 'w').write('42')\\n"
                "print(os.path.isdir('/home/work/.local/lib/extra'))"), mode='query')
            k.destroy()
            res['info'] = s.VFolder('mydata').info()
            for name, mounts in [('abs', ['mydata:/etc']), ('dotdot', ['mydata:../x']), ('six', ['mydata:a', 'mydata:b', 'mydata:c', 'mydata:d', 'mydata:e', 'mydata:f']),
                                 ('unknown', ['nope'])]:
                try:
                    s.Kernel.get_or_create('python3', client_token='bad-' + name, mounts=mounts)
                    res[name] = 'created'
                except BackendAPIError as e:
                    res[name] = e.args[0]
        print(json.dumps(res))
    """, url, alice)
    assert out["run"]["console"] == [["stdout", "1,2\nTrue\n"]]
    assert out["info"]["numFiles"] == 2  # the upload and the kernel's result.txt
    assert out["abs"] == 400 and out["dotdot"] == 400 and out["six"] == 400 and out["unknown"] == 404
    # another owner sees nothing of alice's folders
    other = run_py("bai-1.4.2", """
        import json
        from ai.backend.client.session import Session
        from ai.backend.client.exceptions import BackendAPIError
        with Session() as s:
            listed = s.VFolder.list()
            try:
                s.VFolder('mydata').info(); info = 'visible'
            except BackendAPIError as e:
                info = e.args[0]
            try:
                s.Kernel.get_or_create('python3', client_token='bob-mount', mounts=['mydata']); m = 'created'
            except BackendAPIError as e:
                m = e.args[0]
        print(json.dumps(dict(listed=listed, info=info, m=m)))
    """, url, bob)
    assert other == {"listed": [], "info": 404, "m": 404}
    run_cli(["vfolder", "delete", "mydata"], url, alice)
    run_cli(["vfolder", "delete", "pkgs"], url, alice)
    assert "mydata" not in run_cli(["vfolder", "list"], url, alice).stdout


def test_exec_timeout_interrupts_and_kernel_stays_usable(process_gateway: ProcessGateway, alice: Keys) -> None:
    out = run_py("bai-1.1.11", """
        import json
        from ai.backend.client.request import Request
        from ai.backend.client.kernel import Kernel
        resp = Request('POST', '/kernel/create', {'lang': 'python3', 'clientSessionToken': 'timeout-111',
                                                  'limits': {'maxMem': 262144, 'execTimeout': 2000}}).send()
        k = Kernel(resp.json()['kernelId'])
        runs = [k.execute(code='while True: pass', mode='query')]
        while runs[-1]['status'] == 'continued':
            runs.append(k.execute(code='', run_id=runs[0]['runId'], mode='continue'))
        after = k.execute(code='print("still here")', mode='query')
        info = k.get_info()
        k.destroy()
        print(json.dumps(dict(runs=runs, after=after, info=info)))
    """, process_gateway.url, alice)
    last = out["runs"][-1]
    text = "".join(i[1] for r in out["runs"] for i in r["console"])
    assert last["status"] == "finished" and last["exitCode"] == 1
    assert "timed out" in text and "KeyboardInterrupt" in text
    logs = [json.loads(i[1]) for r in out["runs"] for i in r["console"] if i[0] == "log"]
    assert logs and logs[0]["levelname"] == "WARNING" and "execTimeout" in logs[0]["msg"]
    assert out["after"]["console"] == [["stdout", "still here\n"]]
    assert out["info"]["memoryLimit"] == 262144 and out["info"]["queryTimeout"] == 2000


def test_console_media_and_html(process_gateway: ProcessGateway, alice: Keys) -> None:
    out = run_py("bai-1.1.11", """
        import json
        from ai.backend.client.kernel import Kernel
        k = Kernel.get_or_create('python3', client_token='media-111')
        r = k.execute(code=(
            "import base64\\n"
            "from IPython.display import display, HTML, Image\\n"
            "png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')\\n"
            "display(Image(data=png))\\n"
            "display(HTML('<b>bold</b>'))\\n"
            "print('text')"), mode='query')
        k.destroy()
        print(json.dumps(r))
    """, process_gateway.url, alice)
    kinds = [item[0] for item in out["console"]]
    assert kinds == ["media", "html", "stdout"], out
    assert out["console"][0][1][0] == "image/png" and out["console"][0][1][1].startswith("iVBORw0KGgo")
    assert out["console"][1][1] == "<b>bold</b>"


def test_406_over_hard_limits_starts_nothing(process_gateway: ProcessGateway, alice: Keys) -> None:
    before = len(containers(process_gateway))
    out = run_py("bai-1.1.11", """
        import json
        from ai.backend.client.request import Request
        r1 = Request('POST', '/kernel/create', {'lang': 'python3', 'clientSessionToken': 'huge-mem', 'limits': {'maxMem': 2**40}}).send()
        r2 = Request('POST', '/kernel/create', {'lang': 'python3', 'clientSessionToken': 'huge-cpu', 'config': {'instanceCores': 512}}).send()
        r3 = Request('POST', '/kernel/create', {'lang': 'python3', 'clientSessionToken': 'gpu-ask', 'config': {'instanceGPUs': 1}}).send()
        print(json.dumps([[r.status, r.json()] for r in (r1, r2, r3)]))
    """, process_gateway.url, alice)
    for status, body in out:
        assert status == 406 and body["type"].endswith("/limit-exceeded") and body["title"]
    assert len(containers(process_gateway)) == before


def test_one_owner_across_dialects(process_gateway: ProcessGateway, alice: Keys, bob: Keys) -> None:
    """A v2 kernel opened from the Jupyter API and websocket (the key pair's token) and a Jupyter
    kernel driven by the v2 execute call; other owners get 404, never 403."""
    import asyncio

    from tests.conftest import Client
    from tests.wsclient import KernelWS

    out = run_py("bai-1.1.11", """
        import json
        from ai.backend.client.kernel import Kernel
        from ai.backend.client.request import Request
        k = Kernel.get_or_create('python3', client_token='cross-111')
        k.execute(code='shared = "from v2"', mode='query')
        q = Request('POST', '/admin/graphql', {'query': '{ compute_sessions { sess_id kernel_id } }'}).send().json()
        print(json.dumps({'id': k.kernel_id, 'sessions': q['compute_sessions']}))
    """, process_gateway.url, alice)
    assert out["id"] == "cross-111"  # the session id; compute_sessions names its Jupyter kernel id
    (kid,) = [s["kernel_id"] for s in out["sessions"] if s["sess_id"] == "cross-111"]

    async def jupyter_side() -> str:
        c = Client(process_gateway.url, alice.token)
        assert kid in [k["id"] for k in (await c.fetch("GET", "/api/kernels")).json]
        assert (await Client(process_gateway.url, bob.token).fetch("GET", f"/api/kernels/{kid}")).status == 404
        assert kid not in [k["id"] for k in (await Client(process_gateway.url, bob.token).fetch("GET", "/api/kernels")).json]
        ws = await KernelWS.connect(process_gateway.url, kid, alice.token)
        text = ws.stdout(await ws.execute("print(shared)"))
        ws.close()
        r = await c.fetch("POST", "/api/kernels", {"name": "python3"})
        return text + "|" + r.json["id"]

    text, jid = asyncio.run(jupyter_side()).split("|")
    assert text == "from v2\n"
    out = run_py("bai-1.1.11", f"""
        import json
        from ai.backend.client.kernel import Kernel
        from ai.backend.client.exceptions import BackendAPIError
        r = Kernel('{jid}').execute(code='print("v2 on a jupyter kernel")', mode='query')
        Kernel('{jid}').destroy()
        Kernel('{kid}').destroy()
        print(json.dumps(r))
    """, process_gateway.url, alice)
    assert out["console"] == [["stdout", "v2 on a jupyter kernel\n"]]
    out = run_py("bai-1.1.11", f"""
        import json
        from ai.backend.client.kernel import Kernel
        from ai.backend.client.exceptions import BackendAPIError
        try:
            Kernel('{kid}').get_info(); r = 'visible'
        except BackendAPIError as e:
            r = e.args[0]
        print(json.dumps(r))
    """, process_gateway.url, bob)
    assert out == 404


def test_bad_credentials_and_bad_input(process_gateway: ProcessGateway, alice: Keys) -> None:
    wrong = Keys(alice.access_key, "not-the-secret", alice.user)
    out = run_py("bai-1.1.11", """
        import json
        from ai.backend.client.request import Request
        r = Request('GET', '/folders/').send()
        print(json.dumps([r.status, r.json()]))
    """, process_gateway.url, wrong)
    assert out[0] == 401 and out[1]["type"].endswith("/auth-failed")
    out = run_py("bai-1.1.11", """
        import json
        from ai.backend.client.request import Request
        res = []
        for body in ({'lang': 'python3'}, {'lang': 'python3', 'clientSessionToken': 'x'},
                     {'lang': 'python3', 'clientSessionToken': 'bad token!'}, {'lang': 'cobol', 'clientSessionToken': 'abcd'},
                     {'lang': 'python3', 'clientSessionToken': 'abcd', 'config': {'envs': ['x']}},
                     {'lang': 'python3', 'clientSessionToken': 'abcd', 'limits': {'maxMem': 'lots'}}):
            r = Request('POST', '/kernel/create', body).send()
            res.append([r.status, r.json()])
        r = Request('POST', '/kernel/create'); r.content = b'{not json'; r.content_type = 'application/json'
        r.headers['Content-Type'] = 'application/json'
        resp = r.send(); res.append([resp.status, resp.json()])
        r = Request('POST', '/kernel/00000000-0000-0000-0000-000000000000', {'mode': 'query', 'code': '1'}).send()
        res.append([r.status, r.json()])
        print(json.dumps(res))
    """, process_gateway.url, alice)
    statuses = [s for s, _ in out]
    assert statuses == [400, 400, 400, 404, 400, 400, 400, 404], out
    for _, body in out:
        assert body["type"].startswith("https://api.backend.ai/probs/") and body["title"]


def test_pty_stream(process_gateway: ProcessGateway, alice: Keys) -> None:
    out = run_py("bai-1.4.2", """
        import asyncio, base64, json
        from ai.backend.client.session import AsyncSession
        async def main():
            async with AsyncSession() as s:
                k = await s.Kernel.get_or_create('python3', client_token='pty-142')
                pty = await k.stream_pty()
                await pty.ws.send_str(json.dumps({'type': 'resize', 'rows': 30, 'cols': 100}))
                await pty.ws.send_str(json.dumps({'type': 'ping'}))
                cmd = 'echo "pty:$(whoami):$PWD:$(( 6 * 7 ))"; stty size\\n'
                await pty.ws.send_str(json.dumps({'type': 'stdin', 'chars': base64.b64encode(cmd.encode()).decode()}))
                text, pong = '', False
                while 'pty:work:/home/work:42' not in text or '30 100' not in text:
                    msg = json.loads((await asyncio.wait_for(pty.ws.receive(), 20)).data)
                    if msg['type'] == 'pong':
                        pong = True
                    elif msg['type'] == 'out':
                        text += base64.b64decode(msg['data']).decode(errors='replace')
                await pty.ws.close()
                await k.destroy()
                return {'pong': pong, 'ok': True}
        print(json.dumps(asyncio.run(main())))
    """, process_gateway.url, alice, timeout=120)
    assert out == {"pong": True, "ok": True}
