# One device call: mesh export of the 300,000-Gaussian synthetic asset on CUDA (vertex colors, then a 1024 px
# texture), after the mesh tests. Usage: bash benchmarks/gpu/mesh.sh   (needs .whl/ to hold trimesh,
# scikit-image, scipy, fast-simplification, xatlas and their deps lazy-loader and tifffile)
. benchmarks/gpu/setup.sh || exit 1
mkdir -p $OUT
python3 -m pytest -q -p no:cacheprovider tests/test_mesh.py 2>&1 | tail -3
python3 benchmarks/bench_mesh.py --devices cuda --out $OUT/bench_mesh.json 2>&1 | tail -3
python3 benchmarks/bench_mesh.py --devices cuda --texture 1024 --out $OUT/bench_mesh_tex1024.json 2>&1 | tail -3
