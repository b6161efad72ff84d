"""TensorFlow, imported once and quietly, for the tf1 folder; its sessions and determinism."""
from __future__ import annotations

from ..quiet_import import quiet_import

tf = quiet_import("tensorflow")
v1 = tf.compat.v1
THREADS = 0  # intra-op threads of new sessions; 0 lets TF choose (configure() pins it)


def session(graph):
    """Open a Session on graph: one inter-op thread, THREADS intra-op threads."""
    config = v1.ConfigProto(inter_op_parallelism_threads=1,
                            intra_op_parallelism_threads=THREADS)
    return v1.Session(graph=graph, config=config)


def configure(threads=None):
    """Make TF ops deterministic; pin the intra-op threads of new sessions when given."""
    global THREADS
    tf.config.experimental.enable_op_determinism()
    if threads:
        THREADS = threads
