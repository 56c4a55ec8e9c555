"""A deterministic, seeded simulation of a whole cluster, running the production code.

Every node is a real :class:`~dynamo_core.core.NodeCore` with its real plugins; only the
world around it is simulated: a virtual clock (:mod:`.world`), a network with latency,
loss, duplication, reordering and partitions (:mod:`.network`), disks that survive crashes
and fail on demand (:mod:`.disk`), clients that record what they were told (:mod:`.clients`),
and a checker that judges the history (:mod:`.checker`). The same seed gives the same run,
event for event (``trace_sha256``), thousands of times faster than real time.

Plugin authors can drive it from their own tests, as a whole randomized run::

    from dynamo_core.sim import Spec, simulate

    report = simulate(Spec(seed=7, nodes=5, ops=500, faults=frozenset({"crash"}),
                           plugins=(my_plugin,)))
    assert report.ok, report.verdict.findings()

or step by step, as a scenario (:class:`SimCluster`)::

    cluster = SimCluster(3, seed=1, plugins=(my_plugin,))
    cluster.start()
    cluster.client().put("k", "v")
"""

from .checker import Finding, Verdict, check
from .harness import BASE_CONFIG, ScriptClient, SimCluster
from .run import FAULT_KINDS, Report, Simulation, Spec, parse_seeds, shrink, simulate

__all__ = ["BASE_CONFIG", "FAULT_KINDS", "Finding", "Report", "ScriptClient", "SimCluster",
           "Simulation", "Spec", "Verdict", "check", "parse_seeds", "shrink", "simulate"]
