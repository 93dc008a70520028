# Source this on a lent GPU machine (no network): `. bench/gpu_env.sh`
# Installs the wheels carried in .whl/ and .whl3d/ (what the machine's image lacks) into /tmp/site and
# unpacks the GL loader libraries carried in .gl/ so pyrender can use EGL on the NVIDIA driver.
# Prepare them on a networked machine with `bash scripts/gpu_carry.sh`.
# Carried wheel folders: .whl/ (services, rendering) and/or .whl3d/ (recon families); a name in both
# is installed once.
wheels=$(ls -1 .whl/*.whl .whl3d/*.whl 2>/dev/null | awk -F/ '!seen[$NF]++')
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels \
  || return 1
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
for deb in .gl/*.deb; do dpkg -x "$deb" /; done
ldconfig
vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
if [ -f "$vendor" ]; then export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor; fi
export PYOPENGL_PLATFORM=egl HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
