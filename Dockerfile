# CUDA image of the toolkit: Caffe built with CUDA (sm_60 ... sm_90, NCCL for multi-GPU training)
# by the same caffe_build/setup.sh that `make test` runs on CPU machines.
#   docker build -t fru-toolkit .
#   docker run --gpus all --rm -v $PWD/weights:/opt/fru/weights fru-toolkit --dnn ResNet152 --attack UAP --defense True --gpu 0
FROM nvidia/cuda:12.4.1-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    FRU_CACHE=/opt/fru-cache \
    GLOG_minloglevel=2
RUN apt-get update && apt-get install -y --no-install-recommends make git ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/fru
COPY . /opt/fru
RUN rm -rf .venv && CAFFE_CUDA=on CAFFE_CUDA_ARCH="60 70 75 80 86 89 90" bash caffe_build/setup.sh \
    && rm -rf /var/lib/apt/lists/*

ENTRYPOINT [".venv/bin/python", "defense_example.py"]
CMD ["--help"]
