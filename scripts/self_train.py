"""Self-training (bundle/self_training.py) outside the experiment runner: the recipe of the shipped model.

    python scripts/self_train.py --datalist data/real/datalist_sabs.json --teacher TEACHER/model.pt[,TEACHER2/model.pt] \\
        --out runs/self_train [--adaptation none|dadr --drl_path DRL] [--teacher_adaptation none|dadr|dual] [--seg_epochs 20] \\
        [--amp bfloat16] [--image_size 128 ...]

The datalist's ``target`` MR (unlabelled) are pseudo-labelled by the teacher (a stage-2 model
trained on its ``source`` CT; two comma-separated teachers: where both agree, as the runner's
``agreement_st``), then stage 2 trains again on the CT and the kept pseudo-labelled MR, with
appearance randomisation: ``OUT/model.pt``. The student's ``--adaptation`` is the teachers' unless
``--teacher_adaptation`` says otherwise (the runner's ``dadr_agreement_st``: ``--adaptation dadr
--teacher_adaptation none``, a content-path student of two UNets on the images).
"""

import json

from bundle.cli import run_cli
from bundle.data.datalist import read_datalist
from bundle.pipeline import run_stage2
from bundle.self_training import PSEUDO_SECTION, pseudo_labelled_datalist


def self_train(datalist: str, teacher: str, out: str, adaptation: str = "none", drl_path: str | None = None, seg_epochs: int = 20,
               amp: str | None = None, seed: int = 0, pseudo_repeat: int = 1, teacher_adaptation: str | None = None, **sizes) -> None:
    """Pseudo-label DATALIST's target MR with TEACHER (comma-separated models: where all agree), then train
    OUT/model.pt on its source CT + those MR (each counted ``pseudo_repeat`` times per epoch)."""
    sections = {name: read_datalist(datalist, name) for name, entries in json.load(open(datalist)).items() if entries}
    teachers = [(path.strip(), teacher_adaptation or adaptation) for path in (teacher.split(",") if isinstance(teacher, str) else teacher)]
    student_datalist = pseudo_labelled_datalist(sections, teachers, out, sizes, amp=amp)
    run_stage2(student_datalist.parent, student_datalist.parent, drl_path, seg_epochs, sizes, datalist=str(student_datalist),
               adaptation=adaptation, train_section="source", train_modality="ct", appearance_randomisation=True, joint=True,
               joint_section=PSEUDO_SECTION, joint_repeat=int(pseudo_repeat), amp=amp, seed=seed)
    print(f"{out}/model.pt: self-trained on {len(json.load(open(student_datalist))[PSEUDO_SECTION])} pseudo-labelled MR")


if __name__ == "__main__":
    run_cli(self_train)
