"""Key generation off the event loop: RSA in worker processes, the fast curves in a thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os

from servicekey_operator.keys import KeyPair, generate_keypair, is_rsa


class KeyGenerator:
    """Async keygen. RSA (up to a second for 4096 bits) runs in a process pool so it neither blocks
    the event loop nor holds the GIL against the other keys' I/O; EC and Ed25519 take microseconds."""

    def __init__(self, rsa_workers: int | None = None) -> None:
        # forkserver: forking the operator itself would copy its threads and sockets into workers.
        context = multiprocessing.get_context("forkserver")
        # One core stays free for the event loop and the I/O threads, and the workers run at a lower
        # priority, so an RSA-4096 burst does not starve the fast keys' requests.
        workers = rsa_workers or max(1, (os.cpu_count() or 2) - 1)
        self._pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                                            initializer=os.nice, initargs=(10,))

    async def __call__(self, algorithm: str, key_size: int | None) -> KeyPair:
        """Generate a key pair for ``algorithm`` (and ``key_size`` for RSA)."""
        loop = asyncio.get_running_loop()
        if is_rsa(algorithm):
            return await loop.run_in_executor(self._pool, generate_keypair, algorithm, key_size)
        return await asyncio.to_thread(generate_keypair, algorithm, key_size)

    def shutdown(self) -> None:
        """Stop the worker processes."""
        self._pool.shutdown(wait=False, cancel_futures=True)
