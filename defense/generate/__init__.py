"""rank -> generate: FRUs inserted into a baseline net, as deploy, train and solver files plus
identity-initialised weights.

- ``ranking``: filter norms and the channel ranking (which N channels an FRU regenerates);
- ``graph``: NetParameter queries (readers, producers, outputs) and V1 upgrade;
- ``fd``: the FD competitor's denoising blocks (Xie et al., CVPR 2019), its deploy net;
- ``fru``: the FRU block (``insert_frus``), the train net and FRU training's solver schedule;
- ``surgery``: pure weight surgery (permutations, BatchNorm folding, identity FRU weights);
- ``build``: targets, the files of one generated network, the committed prototxts;
- ``export``: the fast deploy layout (``python -m defense.export``);
- ``__main__``: ``python -m defense.generate``.
"""
from .build import (ALL_COMMAND, FRU_HEADER, load_base_blobs, preset_fru_deploy, save_net_weights,  # noqa: F401
                    targets_for, write_all, write_outputs)
from .fru import FRU_SOLVER, MODES, FruBuild, build_fru, fru_solver_param, insert_frus, train_net  # noqa: F401
