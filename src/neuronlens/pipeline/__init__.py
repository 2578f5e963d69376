"""The audit pipeline: a chain of typed stage results, each built once from the one before.

    AuditPlan        (_plan.py)       settings validated, layers resolved, probe sets, SAEs, labels:
                                      one preflight, before any long work
    BaseReference    (_reference.py)  probe sequences (base responses, cached), concept directions,
                                      then its own base pass (measure_base): reusable
    FineTunedRun     (_reference.py)  BaseReference.measure: the paired 'same' pass, then every
                                      one-side read; the sums, evidence, runtime and text digests
    LearnedStage     (_learned.py)    the Activation Difference Lens on the modules the run holds
                                      resident: what the fine-tune appears to have been trained
                                      on (evidence only, no verdict weight; cached per pair)
    PreferenceResult (_preference.py) rule 2's preference margins on the concept library's matched
                                      pairs, read on the same resident modules (evidence only;
                                      the base's read cached per base, the margins per pair)
    LayerResults,    (_assemble.py)   the sums read through a stats.DriftView: layer drift, most-
    RiskAssessment                    drifted latents, risk (risk.assess)
    AuditReport      (_assemble.py)   built once, last, carrying the AuditConfig it ran with

:func:`compare_models` (``_orchestrate.py``) runs the chain for one fine-tune; with lazily-loaded
handles only one model is resident at a time, and a PEFT adapter on the audited base shares the
base weights (``_residency.py``). :func:`compare_many` runs it for several fine-tunes of one
base (the checkpoints of a training run): every fine-tune checked first, one base pass, then each
fine-tune measured in turn (``measure(consume=False)`` but the last), one resident at a time.
:func:`prepare_reference` stops after the base pass and
returns the :class:`BaseReference`, whose :meth:`~BaseReference.score` audits any number of
models against it (the training monitor). Each stage records its own seconds
(:class:`StageTimes`); the report's ``timings`` are their concatenation.

Extension point, reads: a read is a name in the report ('same', 'own', 'amplified'). 'same' (both
models on the base model's responses, paired token by token) is always run. Every other read is
one-sided (``_reads.py``): side 'base' is the base model on its own responses, measured once in
the base pass for all of them; side 'ft' is the text a function produces, read by the model the
read names ('ft' or 'base'), paired with the base side prompt by prompt: 'own' (the fine-tune on
its own greedy answers), 'amplified' (the base model on the fine-tune's model-diff amplified
answers, ``amplify_alpha``). A new read is one function ``ReadInputs -> list[TokenSequence]`` and
one :class:`OneSideRead` entry in :data:`ONE_SIDE_READS` (name, reader, that function, when the
settings turn it on, its progress label and timing key); the passes, sums, evidence,
``report.reads``, the responses digests and the behavioural evidence (``_behaviour.py``) follow.
Which reads decide the score is ``score_reads``. A stage of another kind slots in as one more
typed result between :class:`FineTunedRun` and the report.

A data-parallel audit (`parallel`, see :mod:`neuronlens._distributed`) runs the same chain on
every rank over that rank's share of the prompts, then all-reduces the sums and gathers the
evidence before the report, so every rank ends with the same report.
"""

from ._accumulate import RECONSTRUCTION_STRIDE, Accumulator
from ._assemble import LayerResults, in_memory_identity, probe_fvu_warnings
from ._learned import AUDIT_LENS, LearnedStage, LensStage
from ._preference import PreferenceResult, PreferenceStage
from ._orchestrate import compare_many, compare_models, prepare_reference
from ._plan import METRICS, AuditPlan, plan_audit, preflight, resolve_saes
from ._reads import ONE_SIDE_READS, OneSideRead, ReadInputs
from ._reference import BaseReference, FineTunedRun
from ._residency import ModelView, runtime_of
from ._timing import StageTimes

__all__ = [
    "AUDIT_LENS",
    "METRICS",
    "ONE_SIDE_READS",
    "RECONSTRUCTION_STRIDE",
    "Accumulator",
    "AuditPlan",
    "BaseReference",
    "FineTunedRun",
    "LayerResults",
    "LearnedStage",
    "LensStage",
    "ModelView",
    "OneSideRead",
    "PreferenceResult",
    "PreferenceStage",
    "ReadInputs",
    "StageTimes",
    "compare_many",
    "compare_models",
    "in_memory_identity",
    "plan_audit",
    "preflight",
    "prepare_reference",
    "probe_fvu_warnings",
    "resolve_saes",
    "runtime_of",
]
