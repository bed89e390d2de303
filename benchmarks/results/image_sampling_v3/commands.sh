# Issue #37: the MNIST sampling table re-judged by every metric (classifier and autoencoder FD and KID,
# background RMS, spectrum distance) on the three committed fast.yaml models of image_sampling_v2, with
# its classifier (copied here) and the digit autoencoder (trained here once). `rescaled-entropic` is the
# schedule with #37's denoising last step; `rescaled-entropic-to-sigma-min` the one before (the README's
# earlier claims). Run from the repository root: bash benchmarks/results/image_sampling_v3/commands.sh
set -e
OUT=benchmarks/results/image_sampling_v3
M=benchmarks/results/image_sampling_v2
C="$M/mnist-fast-seed0/checkpoints/last.ckpt $M/mnist-fast-seed1/checkpoints/last.ckpt $M/mnist-fast-seed2/checkpoints/last.ckpt"
S="karras loglinear rescaled-entropic rescaled-entropic-to-sigma-min surrogate"
B="python -m benchmarks.image_sampling --num 500 --draws 2 --threads 1 --out $OUT --schedules $S --ckpt $C"
$B --solvers heun euler dpmpp_2m --nfe 6 11 16
$B --solvers heun --nfe 35
python -m benchmarks.image_metrics  # the purpose-made images: benchmarks/results/image_metrics
# Issue #35: schedules optimised per model (GITS: `optimized`; weighted by the entropy profile:
# `optimized-entropic`; their local errors cached beside each checkpoint as last.ckpt.optimized.pt), the
# ρ sweep behind the best hand-made schedule, and the older schedules at the new NFE (4, 8; Heun 3, 7).
$B --solvers euler dpmpp_2m heun --nfe 4 6 8 11 16 --schedules optimized optimized-entropic
$B --solvers heun --nfe 35 --schedules optimized optimized-entropic
$B --solvers euler dpmpp_2m heun --nfe 4 8 --schedules karras loglinear rescaled-entropic surrogate
$B --solvers euler dpmpp_2m heun --nfe 4 6 8 16 --schedules karras-rho3 karras-rho5 karras-rho12
