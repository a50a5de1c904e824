"""Load: 200 requests from 8 concurrent clients on 2 slots with a queue of 4.

Nothing may be lost: every request is answered (200) or refused at once (503), the slots served
exactly the answered ones, and afterwards the server is alive with its memory flat.
"""

from __future__ import annotations

import itertools
import threading
import time

import openai
import pytest

from servers import Server

pytestmark = pytest.mark.real_model  # the server runs SmolLM2

N_REQUESTS = 200
N_CLIENTS = 8
# RSS after the second hundred requests may exceed RSS after the first by at most this much: the
# first hundred have set up every buffer a request needs, so real growth would be a leak.
FLAT_BYTES = 4 * 2**20
FLAT_SHARE = 0.02
REFUSED_PAUSE_S = 0.2  # a refused client waits a moment before its next request, as a polite one does


@pytest.fixture(scope="module")
def server():
    live = Server("smollm2", "-np", "2", "-c", "2048", "--queue", "4")
    yield live
    live.stop()


def hammer(server: Server, n_requests: int, first: int) -> list:
    """n_requests requests, from N_CLIENTS threads at once; each outcome is a status code or the exception."""
    outcomes: list = []
    numbers = itertools.count(first)
    lock = threading.Lock()

    def client_loop():
        client = server.client(timeout=120)
        while True:
            with lock:
                i = next(numbers)
                if i >= first + n_requests:
                    return
            messages = [{"role": "user", "content": f"Request {i}: name a colour."}]
            try:
                client.chat.completions.create(model="m", messages=messages, max_tokens=4)
                outcome: object = 200
            except openai.APIStatusError as exc:
                outcome = exc.status_code
                if exc.status_code == 503:
                    time.sleep(REFUSED_PAUSE_S)
            except Exception as exc:  # a dropped connection, a timeout: lost
                outcome = exc
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client_loop) for _ in range(N_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_200_requests_from_8_clients_lose_nothing_and_leave_memory_flat(server):
    served_before = sum(s["n_requests"] for s in server.slots()["slots"])
    first = hammer(server, N_REQUESTS // 2, 0)
    server.wait_until_idle(timeout=30)
    rss_first = server.rss_bytes()
    second = hammer(server, N_REQUESTS // 2, N_REQUESTS // 2)
    server.wait_until_idle(timeout=30)
    rss_second = server.rss_bytes()

    outcomes = first + second
    assert len(outcomes) == N_REQUESTS
    assert set(outcomes) <= {200, 503}, [o for o in outcomes if o not in (200, 503)]
    answered = outcomes.count(200)
    # 8 clients on 2 slots and 4 places in the queue: both outcomes occur.
    assert answered >= N_REQUESTS // 5 and outcomes.count(503) >= 1
    served = sum(s["n_requests"] for s in server.slots()["slots"]) - served_before
    assert served == answered

    assert server.alive()
    with server.http() as http:
        assert http.get("/health").json() == {"status": "ok"}
    growth = rss_second - rss_first
    assert growth <= max(FLAT_BYTES, FLAT_SHARE * rss_first), (rss_first, rss_second)
    print(f"answered {answered}, refused {outcomes.count(503)}; RSS {rss_first} -> {rss_second} bytes")
