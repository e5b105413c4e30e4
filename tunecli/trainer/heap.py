"""Python's cyclic collector and the objects a training process keeps until it exits.

Start-up builds ~850K objects that live as long as the process (torch's, transformers', peft's and
vLLM's modules and configs, the model's modules). Every full collection walks all of them, and the
quickstart's start-up ran 14 (about 3 s of it on the 2-core test machine): automatic ones while modules
import, and vLLM's own ``gc.collect()`` calls while its engine starts. vLLM freezes its heap once its
engine is up (``freeze_gc_heap``) and unfreezes it at shutdown; this does the same from the trainer's
setup on.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager

# A process that exits with objects still frozen (one that never ran cleanup, such as a test): give them
# back first, so the interpreter's last collection frees them as it would have (extension modules such
# as triton's otherwise report them as leaks on the way out).
atexit.register(gc.unfreeze)


def settle() -> None:
    """Collect what is garbage now, then keep every live object out of later collections."""
    gc.collect()
    gc.freeze()


@contextmanager
def start_up() -> Iterator[None]:
    """Automatic collections off while long-lived objects load; what is still alive at the end is settled.

    A start-up that fails leaves nothing frozen: its objects are garbage to be collected, not kept.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        settle()
    except BaseException:
        release()
        raise
    finally:
        if enabled:
            gc.enable()


def release() -> None:
    """Hand the frozen objects back to the collector: their owner (a trainer, an eval engine) is done.

    vLLM's shutdown does the same; without it a closed trainer's model could never be freed in a
    process that goes on (a test session, a notebook).
    """
    gc.unfreeze()
