"""Token data: the embedded Shakespeare corpus, generated recall documents, packing and batches, and the
embedded teacher (`embedded_teacher/`, pretrained by `python -m bench.teacher`)."""
