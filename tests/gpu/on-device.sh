# DEVELOPMENT MACHINE ONLY (tests/gpu/README.md). Sourced (bash) on the GPU machine, from
# the project's root:
#   source tests/gpu/on-device.sh
# Unpacks the Debian packages that tests/gpu/fetch-deps.sh downloaded (LLAVA_PIPE_DEBS, by
# default .gpu-deps/debs) under /opt/gpu-deps, never into /, and exports the variables
# that let CMake find them and the machine's LibTorch (the one inside its pip-installed,
# CUDA-enabled PyTorch). `LLAVA_PIPE_DEBS=DIR bash launch/quickstart.sh gpu` sources it in
# place of apt-get.
_gd_root=/opt/gpu-deps
_gd_debs="${LLAVA_PIPE_DEBS:-.gpu-deps/debs}"
if [ ! -f "$_gd_root/.done" ]; then
  if ! ls "$_gd_debs"/*.deb >/dev/null 2>&1; then
    echo "on-device.sh: no .deb files in '$_gd_debs' (run tests/gpu/fetch-deps.sh where a registry is reachable)" >&2
    return 2
  fi
  mkdir -p "$_gd_root"
  for f in "$_gd_debs"/*.deb; do dpkg -x "$f" "$_gd_root"; done
  # Debian's CMake/pkg-config files name /usr; point them at the unpacked tree.
  grep -rlI '/usr/' "$_gd_root/usr/lib/x86_64-linux-gnu/cmake" "$_gd_root/usr/share/cmake" \
      "$_gd_root/usr/lib/x86_64-linux-gnu/pkgconfig" "$_gd_root/usr/share/pkgconfig" 2>/dev/null |
    xargs -r sed -i "s#\([\"; =(]\)/usr/\(include\|lib\|bin\|share\)#\1$_gd_root/usr/\2#g"
  touch "$_gd_root/.done"
fi
_gd_torch="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
# (the environment form of CMAKE_PREFIX_PATH is ":"-separated)
export CMAKE_PREFIX_PATH="$_gd_torch:$_gd_root/usr:$_gd_root/usr/lib/x86_64-linux-gnu/cmake:$_gd_root/usr/share/cmake${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PKG_CONFIG_PATH="$_gd_root/usr/lib/x86_64-linux-gnu/pkgconfig:$_gd_root/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
_gd_torch_lib="$(dirname "$_gd_torch")/../lib"
export LD_LIBRARY_PATH="$_gd_root/usr/lib/x86_64-linux-gnu:$_gd_torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$_gd_root/usr/bin:$PATH"
export CPATH="$_gd_root/usr/include${CPATH:+:$CPATH}"
export GPU_DEPS_ROOT="$_gd_root" TORCH_CMAKE_PREFIX="$_gd_torch"
# nvcc on that machine is /usr/local/cuda/bin/nvcc; its GPU is an H200 (9.0).
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export CUDACXX="${CUDACXX:-/usr/local/cuda/bin/nvcc}"
unset _gd_debs _gd_torch _gd_torch_lib
