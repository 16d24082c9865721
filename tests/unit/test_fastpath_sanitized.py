"""The compiled fast path under AddressSanitizer and UndefinedBehaviorSanitizer.

The C side reads every datagram the network sends; this builds it with
``-fsanitize=address,undefined`` and drives it in a child Python (the
sanitizer runtime must be preloaded there) with random and mutated
datagrams through ``fp_answer``, heavy churn of the session table, and real
batches through ``fp_serve`` on a loopback socket, including datagrams
larger than a slot.  Any out-of-bounds access or undefined behaviour aborts
the child.  About a minute, so only with PEERLINK_SANITIZE=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.environ.get("PEERLINK_SANITIZE") != "1", reason="PEERLINK_SANITIZE=1 runs it")

CHILD = textwrap.dedent(
    """
    import ctypes, random, socket, sys, time
    from pathlib import Path
    from rendezvous import fastpath
    from rendezvous.core import ServerConfig
    from rendezvous.tokens import Tokens

    library = fastpath.load(Path(sys.argv[1]))
    assert library is not None
    fast = fastpath.FastPath.for_config(library, ServerConfig())
    tokens = Tokens(b"s" * 32)
    rnd = random.Random(int(sys.argv[2]))

    def address(peer_id):
        return (f"10.0.{peer_id // 250 % 250}.{peer_id % 250}", 1000 + peer_id)

    model = {}
    for _ in range(20_000):
        peer_id = rnd.randint(1, 20_000)
        if rnd.random() < 0.6:
            model[peer_id] = tokens.session(peer_id, b"k", address(peer_id))
            fast.add(peer_id, address(peer_id), model[peer_id])
        else:
            model.pop(peer_id, None)
            fast.discard(peer_id)
    assert len(fast) == len(model)

    # Each datagram and address in a buffer of exactly its size (PYTHONMALLOC=malloc:
    # one malloc each), so that reading a byte past either is caught.
    reply = ctypes.create_string_buffer(2048)
    peer, ttl = ctypes.c_uint32(), ctypes.c_uint32()
    def answer(data, source):
        exact = ctypes.create_string_buffer(data, len(data)) if data else ctypes.create_string_buffer(1)
        name = fastpath.sockaddr(source, socket.AF_INET6)
        exact_name = ctypes.create_string_buffer(name, len(name))
        return library.answer(
            fast._context, ctypes.cast(exact, ctypes.c_char_p), len(data), ctypes.cast(exact_name, ctypes.c_char_p),
            len(name), reply, 2048, ctypes.byref(peer), ctypes.byref(ttl),
        )

    header = bytes.fromhex("000100002112a442")
    for i in range(20_000):
        if rnd.random() < 0.5:
            data = bytearray(rnd.randbytes(rnd.randint(0, 80)))
        else:
            data = bytearray(header + rnd.randbytes(12 + rnd.choice([0, 8, 24, 32, 40])))
            if rnd.random() < 0.5:
                data[0:2] = b"\\x20\\x02"  # REFRESH
            if rnd.random() < 0.5:
                peer_id = rnd.choice(list(model) or [1])
                data[20:44] = b"\\x40\\x07\\x00\\x14" + model.get(peer_id, bytes(20))
        if len(data) >= 20 and rnd.random() < 0.7:
            data[2:4] = (len(data) - 20).to_bytes(2, "big")
        answer(bytes(data), ("127.0.0.1", 5) if i % 2 else ("::1", 7))
        if i == 0:
            assert answer(header + bytes(12), ("::1", 7)) > 0  # the exact buffers do reach the C side

    server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.bind(("::1", 0))
    server.setblocking(False)
    fast.attach(server)
    client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    client.bind(("::1", 0))
    client.setblocking(False)
    answered = delivered = 0
    def deliver(data, source):
        global delivered
        delivered += 1
    for _ in range(100):
        for _ in range(rnd.randint(1, 40)):
            data = header + rnd.randbytes(12) if rnd.random() < 0.4 else rnd.randbytes(rnd.randint(0, 3000))
            client.sendto(data, server.getsockname()[:2])
        while fast.receive(deliver, lambda bindings, refreshed: None) > 0:
            pass
        while True:
            try:
                client.recv(4096)
                answered += 1
            except BlockingIOError:
                break
    assert answered > 0 and delivered > 0, (answered, delivered)
    print("clean", answered, delivered)
    """
)


def runtime(name: str, compiler: str) -> str:
    path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    if not path or not Path(path).is_file():
        pytest.skip(f"{name} not found for {compiler}")
    return path


@pytest.mark.timeout(900)
def test_the_c_side_is_clean_under_asan_and_ubsan(tmp_path: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    library = tmp_path / "libfastpath.so"
    subprocess.run(
        [compiler, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fPIC",
         "-shared", "-o", str(library), str(ROOT / "rendezvous" / "_fastpath.c")],
        check=True,
    )  # fmt: skip
    preload = ":".join(runtime(name, compiler) for name in ("libasan.so", "libubsan.so"))
    env = dict(os.environ, LD_PRELOAD=preload, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", PYTHONMALLOC="malloc")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(library), "7"], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.startswith("clean"), result.stdout
