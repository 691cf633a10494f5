#!/usr/bin/env bash
# Set up schism-napari on a fresh Debian/Ubuntu machine: the system libraries Qt and napari need
# (plus Xvfb for machines without a display), and a virtual environment at .venv with the package,
# napari, every extra a README command uses (export, dask, video) and tox. Safe to run again: it only
# installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES="xvfb xauth libgl1 libopengl0 libglx-mesa0 libgl1-mesa-dri libegl1 libfontconfig1
fonts-dejavu-core libglib2.0-0 libdbus-1-3 libx11-xcb1 libxkbcommon-x11-0 libxcursor1 libxcb-icccm4
libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0
libxcb-xfixes0 libxcb-xkb1 libxcb-cursor0"

if command -v dpkg-query >/dev/null 2>&1; then
  missing=""
  for package in $DEBIAN_PACKAGES; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
  done
  if [ -n "$missing" ]; then
    echo "bootstrap: installing Debian packages:$missing"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq $missing >/dev/null
  fi
else
  echo "bootstrap: not a Debian system; make sure Qt's X11/OpenGL libraries (and Xvfb if headless) are installed"
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# constraints.txt pins torch==2.13.0 so pip never replaces it with a CUDA build (see README).
# export: schism export --format onnx|bioimageio; dask: predict --workers/--dask-scheduler; video: .mp4 inputs
.venv/bin/python -m pip install -q -c constraints.txt -e ".[napari,export,dask,video]" tox
echo "bootstrap: ready (.venv/bin/schism, .venv/bin/napari, .venv/bin/tox)"
