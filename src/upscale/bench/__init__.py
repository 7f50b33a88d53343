"""`upscale bench`: quality and speed of models against classic interpolation on a test set.

The pipeline is BasicSR's and EDSR's; the bicubic row is within 0.013 dB and 0.001 SSIM of the published
tables (Set5 x4: 28.43 dB / 0.8111 here, 28.42 / 0.8104 published), which were made on the Y plane
alone (docs/bench.md has the difference and a pipeline that gives them to the digit):

1. each HR image is read as 8-bit and mod-cropped to a multiple of the scale (``dataprep``);
2. its LR input is MATLAB's ``imresize(HR, 1/s, 'bicubic')`` (antialiased; rows then columns, each
   pass rounded to 8 bits as MATLAB does for uint8 images), or the file of the same stem in ``--lr``;
3. every method maps LR (8-bit) to an 8-bit image of exactly the HR size: nearest, bilinear and
   Lanczos with Pillow, bicubic with the MATLAB-compatible ``matlab_resize.imresize``, models through
   ``api.Upscaler`` (a model of another native scale is Lanczos-resized to the asked scale; the row's
   note says so);
4. PSNR/SSIM (``metrics``) compare it with HR on the Y channel (or RGB with ``y_channel=False``),
   cropping ``scale`` pixels from each side, per image, then averaged over images.

Grayscale HR images (Set14's bridge): with ``gray="y"`` (default) the gray plane is its own luma, as in
the MATLAB evaluation scripts behind the published tables; models get it repeated to RGB and their
output is averaged back to one plane (``api.Upscaler``). With ``gray="rgb"`` the image is repeated to RGB
first and its BT.601 Y (16..235) is compared, as BasicSR's Python metrics do; on Set14 this gives
0.09 dB more for every method (bridge alone gains 20 log10(255/219) = 1.32 dB).

Speed: each method first runs ``warmup_runs`` times on the first image, untimed; then every image is
timed with ``time.perf_counter`` around the call that produces the 8-bit output (models: the whole
``Upscaler.upscale``, which returns host memory, so GPU work has finished). Peak memory is the growth
of this process's resident set (RSS) over its value just before the method's timed images, sampled
every 2 ms by a thread while they run (Linux /proc only; ``None`` elsewhere). It covers numpy, Pillow
and torch CPU buffers alike, but memory an allocator kept from an earlier method is not counted again,
so read it as an order of magnitude. On CUDA the row also reports ``torch.cuda.max_memory_allocated``.

Rooms: ``results`` (the records and their JSON/CSV/Markdown forms), ``methods`` (baselines and
models as LR -> SR functions), ``measure`` (memory sampling), ``sheet`` (the contact sheet), ``run``
(options and the loop over scales and methods).
"""

from .methods import BASELINES, LoadedModel, load_models
from .results import SCHEMA, BenchResult, ImageInfo, ImageScore, MethodRow, SheetCell, SheetRow
from .run import GRAY_MODES, BenchOptions, environment, run_bench
from .sheet import render_sheet, write_sheet

__all__ = ["BASELINES", "GRAY_MODES", "SCHEMA", "BenchOptions", "BenchResult", "ImageInfo", "ImageScore",
           "LoadedModel", "MethodRow", "SheetCell", "SheetRow", "environment", "load_models", "render_sheet",
           "run_bench", "write_sheet"]
