"""A node the Swarm manager says is down is confirmed by reaching its address: an answer of any
kind (even a refused connection) means the node is there."""
from __future__ import annotations

import socket
import time

from kernel_gateway_ext.containers.swarm_events import reachable


def test_a_listening_port_and_a_refused_one_both_answer() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert reachable("127.0.0.1", listening.getsockname()[1])
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: the connect is refused
        assert reachable("127.0.0.1", port)


def test_silence_is_not_an_answer_and_ends_at_the_timeout() -> None:
    """A listener whose accept queue is full drops SYNs without a word, as a cut link does."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        address = full.getsockname()
        queued: list[socket.socket] = []
        while True:  # fill the queue: each connect the kernel answers takes a place in it
            try:
                queued.append(socket.create_connection(address, timeout=0.3))
            except TimeoutError:
                break
            assert len(queued) < 10
        began = time.monotonic()
        assert not reachable(*address, timeout=0.3)
        assert time.monotonic() - began < 2
        for s in queued:
            s.close()


def test_no_route_is_not_an_answer() -> None:
    assert not reachable("224.0.0.1", timeout=0.3)  # multicast: no TCP connection can go there
