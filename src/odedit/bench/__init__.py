"""The benchmark behind ``odedit bench``: restore a set of degraded faces with several
methods and measure fidelity (PSNR, SSIM, LPIPS) and realism (SWD, FID), as in Table 1
of the ODEdit paper.

Protocol (one run)::

    clean image  --fit to the model resolution-->  clean (H, W, 3) uint8
    clean        --one random corruption at severity, seeded by (seed, file name)-->  degraded
                 (the same image `odedit corrupt --corruption random --seed` makes)
    degraded     --each method (source = the degraded image itself)-->  restored (uint8 PNG)
    per image:   PSNR, SSIM (and LPIPS, identity similarity if available) of restored vs clean
    per set:     SWD (and FID if available) of the restored set vs a reference set

Everything a method produces is written under the output folder as it goes, so a run
can be interrupted and resumed::

    DIR/bench.json                      settings that define the results, methods, runs
    DIR/images/clean/<key>.png          clean images at the model resolution
    DIR/images/degraded/<key>.png       degraded inputs (+ manifest.csv, as `odedit corrupt`)
    DIR/images/<method>/<key>.png       restored images
    DIR/records/degraded/<key>.json     corruption, severity, seed of each image
    DIR/records/<method>/<key>.json     seed(s), NFE, seconds, PSNR, SSIM of one restoration
    DIR/results.csv                     long format: image, corruption, method, metric, value
    DIR/summary.md                      Table-1-like table + per-corruption breakdown
    DIR/grid.png                        rows: degraded / each method / clean

``<key>`` is the file stem of the clean image. Metrics are computed on the saved uint8
images (what a user gets), converted to float64 in [0, 1].

Several processes (``accelerate launch``) split the images: process i takes images
``i::num_processes`` and writes its own per-image files; the main process aggregates
once every process is done.

The package is split by responsibility, with imports going one way (protocol -> report
-> methods -> records) and only public names crossing modules:
:mod:`odedit.bench.protocol` holds the input image sets, seeds, process sharding,
settings, resume checks and the run loop (:func:`run_benchmark`);
:mod:`odedit.bench.methods` the evaluated methods (:class:`MethodSpec`, their names,
settings text and recorded identity, :func:`build_methods`); :mod:`odedit.bench.report`
the per-image fidelity (:func:`fidelity`) and the aggregation into results.csv, summary.md
and grid.png (:func:`aggregate`, :func:`label_rows`); :mod:`odedit.bench.records` the
output folder's :class:`Layout` (images, per-image records), JSON reads, manifests and
:class:`BenchError`. The public names are re-exported here. To patch a function, patch it
where it is looked up: ``odedit.bench.protocol.aggregate`` for the call in
``run_benchmark``, not ``odedit.bench.aggregate``.
"""

from odedit.bench.methods import (
    METHOD_KINDS,
    MethodSpec,
    ablation_methods,
    build_methods,
    odedit_method_name,
    sdedit_method_name,
    sdedit_nfe_matched,
    sdedit_start_timestep,
)
from odedit.bench.protocol import (
    BenchSettings,
    BenchStats,
    ImageRef,
    ImageSet,
    ProcessContext,
    corruption_choice_seed,
    corruption_seed,
    process_context,
    restore_seed,
    run_benchmark,
    shard,
)
from odedit.bench.records import BenchError, Layout, ManifestEntry, read_json, read_manifest, write_manifest
from odedit.bench.report import SWD_CACHE_DIR, aggregate, fidelity, label_rows

# Importable from here as before the split, though not in __all__:
from odedit.bench.methods import ABLATION_STEP_SIZES  # noqa: F401
from odedit.bench.protocol import model_fingerprint  # noqa: F401
from odedit.bench.records import FORMAT_VERSION, MANIFEST_COLUMNS, RESULT_COLUMNS, SET_ROW  # noqa: F401
from odedit.bench.records import GRID_FILE, MANIFEST_FILE, RESULTS_FILE, SETTINGS_FILE, SUMMARY_FILE  # noqa: F401
from odedit.bench.report import PSNR_CAP, SWD_CACHE_VERSION, SWD_SETTINGS  # noqa: F401

__all__ = [
    "BenchError",
    "ImageRef",
    "ImageSet",
    "Layout",
    "ManifestEntry",
    "read_json",
    "read_manifest",
    "write_manifest",
    "METHOD_KINDS",
    "MethodSpec",
    "odedit_method_name",
    "sdedit_method_name",
    "sdedit_nfe_matched",
    "sdedit_start_timestep",
    "build_methods",
    "ablation_methods",
    "shard",
    "ProcessContext",
    "process_context",
    "corruption_seed",
    "corruption_choice_seed",
    "restore_seed",
    "BenchSettings",
    "BenchStats",
    "run_benchmark",
    "aggregate",
    "fidelity",
    "label_rows",
    "SWD_CACHE_DIR",
]
