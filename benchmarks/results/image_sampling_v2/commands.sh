# The MNIST sampling table, second edition (#21): three retrained fast.yaml models (committed beside the rows)
# and the sweep's classifier (f0bcbc7732faaa48). Phases in priority order. Run from the repository root:
#   bash benchmarks/results/image_sampling_v2/commands.sh      (CKPTS=... to run a subset of the models)
set -e
OUT=benchmarks/results/image_sampling_v2
CKPTS="${CKPTS:-$OUT/mnist-fast-seed0/checkpoints/last.ckpt $OUT/mnist-fast-seed1/checkpoints/last.ckpt $OUT/mnist-fast-seed2/checkpoints/last.ckpt}"
B="python -m benchmarks.image_sampling --num 500 --draws 2 --threads 1 --out $OUT --ckpt $CKPTS"
ALL="karras loglinear vp entropic rescaled-entropic structure rescaled-structure surrogate"
$B --solvers euler heun dpmpp_2m --nfe 6 11 16 --schedules $ALL
$B --solvers euler_ancestral --nfe 6 11 16 --schedules $ALL
$B --solvers euler heun dpmpp_2m --nfe 35 63 --schedules karras loglinear rescaled-entropic surrogate
$B --profile offline --solvers euler heun dpmpp_2m --nfe 6 11 16 --schedules rescaled-entropic surrogate
