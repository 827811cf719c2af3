#!/usr/bin/env bash
# Downloads the Debian packages that sinkflow builds against, except LibTorch (the device machine brings its own
# PyTorch), into device/debs/ (ignored by git), for tools/device_check.sh to unpack on a machine that has none
# of them. Run here, before a device call that names device/debs in `carry` (the device tool's limit: 64 MiB).
# Usage: tools/device_pack.sh            (idempotent: re-downloads nothing already there)
set -euo pipefail
cd "$(dirname "$0")/.."
# -dev packages and the runtime libraries they link, as install_deps.sh names them. libtbbbind-2-5 must be there
# because TBBTargets.cmake checks that its file exists; oneTBB loads it with dlopen and goes on without it when
# its libhwloc15 is missing, which is left out, as is everything a stock Debian/Ubuntu with a C++ compiler and
# PyTorch has (libc6, libstdc++6, libgcc-s1).
pkgs=(libtbb-dev libtbb12 libtbbmalloc2 libtbbbind-2-5
      libyaml-cpp-dev libyaml-cpp0.7
      libspdlog-dev libspdlog1.10 libfmt-dev libfmt9
      libhnswlib-dev nlohmann-json3-dev libcli11-dev catch2)
dir=device/debs
mkdir -p "$dir"
(cd "$dir" && for p in "${pkgs[@]}"; do
   ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download -q "$p"
 done)
# The manifest: what was packed (name, version), read back by device_check.sh for its report.
for f in "$dir"/*.deb; do dpkg-deb -W --showformat='${Package} ${Version}\n' "$f"; done >"$dir/MANIFEST"
total=$(du -cb "$dir"/*.deb | tail -1 | cut -f1)
echo "device_pack: $(ls "$dir"/*.deb | wc -l) packages in $dir, $(awk -v b="$total" 'BEGIN{printf "%.2f", b/1048576}') MiB (carry limit 64 MiB)"
if ((total > 60 * 1048576)); then
  echo "device_pack: over 60 MiB: the working tree and this folder together must stay under 64 MiB" >&2
  exit 1
fi
