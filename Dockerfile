# CUDA image of the toolkit: Caffe built with CUDA 13.0 from PyPI's toolchain (sm_75 ... sm_90 and
# PTX for sm_90, NCCL for multi-GPU training) by the same caffe_build/setup.sh (CAFFE_CUDA=pip)
# that `make test-cuda` compiles in CI. The base is the Debian 12 that CI runs; the driver comes
# from the host through the NVIDIA container toolkit (driver 580 or newer: CUDA 13.0).
#   docker build -t fru-toolkit .
#   docker run --gpus all --rm -v $PWD/weights:/opt/fru/weights fru-toolkit --dnn ResNet152 --attack UAP --defense True --gpu 0
# A shorter build for one GPU generation: docker build --build-arg CAFFE_CUDA_ARCH=90 -t fru-toolkit .
FROM debian:bookworm

ARG CAFFE_CUDA_ARCH="75 80 86 89 90"
ENV DEBIAN_FRONTEND=noninteractive \
    FRU_CACHE=/opt/fru-cache \
    FRU_DOWNLOAD_DIR=/data \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN apt-get update && apt-get install -y --no-install-recommends make ca-certificates curl python3 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/fru
COPY . /opt/fru
# The build's object files, the compiler and the downloads are not needed at run time.
RUN rm -rf .venv .venv-cuda \
    && CAFFE_CUDA=pip CAFFE_CUDA_ARCH="$CAFFE_CUDA_ARCH" bash caffe_build/setup.sh \
    && find "$FRU_CACHE/caffe" -name '*.o' -delete \
    && rm -rf /var/lib/apt/lists/* /root/.cache/pip "$FRU_CACHE/downloads" \
              "$FRU_CACHE"/cuda/pip-*/pkgs/nvidia/cu13/nvvm "$FRU_CACHE"/cuda/pip-*/pkgs/nvidia/cu13/lib/*.a

ENTRYPOINT [".venv-cuda/bin/python", "defense_example.py"]
CMD ["--help"]
