"""Optional TLS with X.509 client certificates: a verified certificate's CN is the caller."""
from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest


def make_pki(d: Path) -> dict[str, str]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kge-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, cn, ext in (("server", "127.0.0.1", ["-extfile", "san.ext"]), ("client", "x509-" + uuid.uuid4().hex[:6], []),
                          ("reserved", "admin", [])):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
            "-out", f"{name}.pem", *ext)
    (d / "rogue").mkdir()
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=rogue", "-keyout", "rogue/r.key",
        "-out", "rogue/r.pem")
    return {k: str(d / v) for k, v in {"ca": "ca.pem", "cert": "server.pem", "key": "server.key",
                                        "ccert": "client.pem", "ckey": "client.key",
                                        "acert": "reserved.pem", "akey": "reserved.key",
                                        "rcert": "rogue/r.pem", "rkey": "rogue/r.key"}.items()}


async def test_client_certificate_identity(make_gateway, tmp_path) -> None:
    pki = make_pki(tmp_path)
    async with make_gateway(f"--Gateway.certfile={pki['cert']}", f"--Gateway.keyfile={pki['key']}",
                            f"--Gateway.client_ca={pki['ca']}") as gw:
        assert gw.url.startswith("https://")
        client = AsyncHTTPClient()

        async def get(path: str, **kw) -> int:
            req = HTTPRequest(gw.url + path, ca_certs=pki["ca"], **kw)
            try:
                return (await client.fetch(req, raise_error=False)).code
            except Exception:  # noqa: BLE001 - a refused handshake
                return -1

        # with its certificate the caller is authenticated (as the certificate's CN)
        assert await get("skaha/v0/session", client_cert=pki["ccert"], client_key=pki["ckey"]) == 200
        assert await get("api/kernels", client_cert=pki["ccert"], client_key=pki["ckey"]) == 200
        # a certificate naming the gateway token's user is no identity (it would own the operator's kernels)
        assert await get("api/kernels", client_cert=pki["acert"], client_key=pki["akey"]) == 401
        # without one, a token still works; with neither, 401
        assert await get("skaha/v0/session") == 401
        assert await get("api/kernels", headers={"Authorization": f"token {gw.client.token}"}) == 200
        # a certificate from another CA is refused in the handshake
        assert await get("skaha/v0/session", client_cert=pki["rcert"], client_key=pki["rkey"]) in (-1, 599)


async def test_certificate_callers_are_safe_from_cross_site_forms(make_gateway, tmp_path) -> None:
    """A browser holding a client certificate presents it to any site's form: a cross-site form post
    must not start (or delete) a Skaha session in the certificate owner's name."""
    pki = make_pki(tmp_path)
    async with make_gateway(f"--Gateway.certfile={pki['cert']}", f"--Gateway.keyfile={pki['key']}",
                            f"--Gateway.client_ca={pki['ca']}") as gw:
        client = AsyncHTTPClient()
        form = "name=csrf&image=images.canfar.net/skaha/terminal:1.1.1&cores=1&ram=1&cmd=true"

        async def post(headers: dict[str, str]) -> tuple[int, str]:
            req = HTTPRequest(gw.url + "skaha/v0/session", method="POST", body=form, ca_certs=pki["ca"],
                              client_cert=pki["ccert"], client_key=pki["ckey"],
                              headers={"Content-Type": "application/x-www-form-urlencoded", **headers})
            r = await client.fetch(req, raise_error=False)
            return r.code, (r.body or b"").decode()

        async def sessions() -> list:
            req = HTTPRequest(gw.url + "skaha/v0/session", ca_certs=pki["ca"], client_cert=pki["ccert"],
                              client_key=pki["ckey"])
            return json.loads((await client.fetch(req)).body)

        code, body = await post({"Origin": "https://evil.example"})
        assert code == 403 and "cross-site" in body
        code, body = await post({"Sec-Fetch-Site": "cross-site"})
        assert code == 403
        code, body = await post({"Origin": "null"})  # a sandboxed frame
        assert code == 403
        assert await sessions() == []
        # the gateway's own pages (same origin) and command-line clients (no Origin) still work
        code, sid = await post({"Origin": gw.url.rstrip("/")})
        assert code == 200, sid
        code, sid2 = await post({})
        assert code == 200, sid2
        assert len(await sessions()) == 2


async def test_certificate_identities_are_unambiguous(make_gateway, tmp_path) -> None:
    """With a bundle of two CAs, a certificate from the second naming a user of the first must not be
    that user: the gateway makes the operator say which CAs issue identities, and a CN that is no
    valid user name is no identity."""
    pki = make_pki(tmp_path)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other-ca", "-keyout", "ca2.key",
        "-out", "ca2.pem")
    victim = subprocess.run(["openssl", "x509", "-in", pki["ccert"], "-noout", "-subject", "-nameopt", "multiline"],
                            capture_output=True, text=True, check=True).stdout.split("=")[-1].strip()
    for name, cn, ca in (("namesake", victim, "ca2"), ("weird", "bad user!", "ca")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "1", "-out", f"{name}.pem")
    bundle = tmp_path / "bundle.pem"
    bundle.write_text((tmp_path / "ca.pem").read_text() + (tmp_path / "ca2.pem").read_text())
    tls = [f"--Gateway.certfile={pki['cert']}", f"--Gateway.keyfile={pki['key']}", f"--Gateway.client_ca={bundle}"]

    # a bundle of several CAs without naming the issuers: refused at start, with the reason
    try:
        async with make_gateway(*tls):
            raise AssertionError("the gateway started with an ambiguous client CA bundle")
    except SystemExit as e:
        assert "client_cert_issuers" in str(e)

    async with make_gateway(*tls, "--Authenticator.client_cert_issuers", "kge-test-ca") as gw:
        client = AsyncHTTPClient()

        async def sessions(name: str) -> tuple[int, bytes]:
            req = HTTPRequest(gw.url + "skaha/v0/session", ca_certs=pki["ca"], client_cert=str(tmp_path / f"{name}.pem"),
                              client_key=str(tmp_path / f"{name}.key"))
            r = await client.fetch(req, raise_error=False)
            return r.code, r.body

        assert (await sessions("client"))[0] == 200
        # before: the other CA's certificate with the same CN was the same user
        assert (await sessions("namesake"))[0] == 401
        assert (await sessions("weird"))[0] == 401


async def test_a_certificate_opens_its_own_notebook_session_through_the_proxy(make_gateway, tmp_path) -> None:
    """The notebook proxy skipped certificates: a caller who created the session with its certificate
    got 401 at its connectURL."""
    import asyncio
    from urllib.parse import urlencode

    pki = make_pki(tmp_path)
    async with make_gateway(f"--Gateway.certfile={pki['cert']}", f"--Gateway.keyfile={pki['key']}",
                            f"--Gateway.client_ca={pki['ca']}") as gw:
        client = AsyncHTTPClient()
        mine = {"ca_certs": pki["ca"], "client_cert": pki["ccert"], "client_key": pki["ckey"]}
        q = urlencode({"name": "nb", "image": "images.canfar.net/skaha/notebook:latest", "type": "notebook",
                       "cores": 1, "ram": 1})
        r = await client.fetch(HTTPRequest(gw.url + "skaha/v0/session?" + q, method="POST", body=b"", **mine))
        sid = r.body.decode().strip()
        try:
            for _ in range(150):
                r = await client.fetch(HTTPRequest(f"{gw.url}skaha/session/{sid}/api", **mine), raise_error=False)
                if r.code == 200:
                    break
                await asyncio.sleep(0.2)
            assert r.code == 200 and "version" in json.loads(r.body), (r.code, r.body[:300])
            # without it: nothing; a cross-site form with it: refused
            anon = await client.fetch(HTTPRequest(f"{gw.url}skaha/session/{sid}/api", ca_certs=pki["ca"]),
                                      raise_error=False)
            assert anon.code == 401
            forged = await client.fetch(HTTPRequest(f"{gw.url}skaha/session/{sid}/api/kernels", method="POST",
                                                    body=b"{}", headers={"Origin": "https://evil.example"}, **mine),
                                        raise_error=False)
            assert forged.code == 403
        finally:
            await client.fetch(HTTPRequest(f"{gw.url}skaha/v0/session/{sid}", method="DELETE", **mine),
                               raise_error=False)


async def test_the_page_signs_in_with_a_client_certificate(make_gateway, tmp_path) -> None:
    """Over TLS the page's sign-in takes the browser's certificate: the cookie it sets counts only
    while the same certificate comes with it."""
    pki = make_pki(tmp_path)
    async with make_gateway(f"--Gateway.certfile={pki['cert']}", f"--Gateway.keyfile={pki['key']}",
                            f"--Gateway.client_ca={pki['ca']}") as gw:
        client = AsyncHTTPClient()
        origin = gw.url.rstrip("/")

        async def call(method: str, path: str, cookie: str = "", cert: bool = True, body: bytes | None = None,
                       csrf: str = "") -> tuple[int, dict[str, str], bytes]:
            headers = {"Cookie": cookie, "Origin": origin, "Content-Type": "application/json"}
            if csrf:
                headers["X-KGE-CSRF"] = csrf
            kw = {"client_cert": pki["ccert"], "client_key": pki["ckey"]} if cert else {}
            r = await client.fetch(HTTPRequest(gw.url + path, method=method, body=body, headers=headers, ca_certs=pki["ca"],
                                               **kw), raise_error=False)
            return r.code, dict(r.headers), r.body or b""

        assert (await call("POST", "ui/api/signin", body=b'{"certificate": true}', cert=False))[0] == 401
        code, headers, body = await call("POST", "ui/api/signin", body=b'{"certificate": true}')
        assert code == 200 and json.loads(body)["user"].startswith("x509-")
        assert "secure" in headers["Set-Cookie"].lower(), "over TLS the cookie is Secure"
        cookie, csrf = headers["Set-Cookie"].split(";")[0], json.loads(body)["csrf"]
        assert (await call("GET", "ui/api/me", cookie))[0] == 200
        assert (await call("POST", "v2/folders", cookie, body=b'{"name": "certs"}', csrf=csrf))[0] == 201
        # The cookie alone, without the certificate it was made for, is no one.
        assert (await call("GET", "ui/api/me", cookie, cert=False))[0] == 401
