"""The batch pseudo-labeling job: a frozen teacher labels a large unlabeled corpus into WebDataset shards.

    accelerate launch distill/pseudolabel.py --teacher T --input I --output O [options]

Modules, in the order data flows through them:

- ``cli``: the command (``main``, ``status``); ``config``: the job's options, and which of them define
  the output (the resume check).
- ``inputs``: input discovery (directory, glob, list file, WebDataset tars, streamed URLs, Hugging Face
  dataset) into a frozen, memory-mapped listing; keys; the split into units (one unit = one shard).
- ``decode``: one input -> upright RGB (JPEG draft decoding) -> each teacher's model input, plus the
  bytes of the image to store; bad inputs become error records, never exceptions.
- ``stream``: the DataLoader side: workers stream their units, decode, group by input size and emit
  batches of one size.
- ``runner``: the model side: batches -> predictions (one stream on a GPU, several forwards on CPUs).
- ``tta``: inference with test-time augmentation and the agreement confidence.
- ``writer``: the background thread that resizes predictions back, encodes and writes shards
  (``distill.data.shards``, ``distill.data.codec``: the shard format and its one decode function).
- ``claims``: claims on units and clean-up of abandoned temporary files: launches sharing an output.
- ``job``: the run: job file, claims and resume, the process's loop, stop and failure, the manifest.
- ``status``: ``pseudolabel.py status O``: units done / claimed / pending, rate and ETA.
- ``curation``: the step before labeling (``-m pseudolabel.curation``): facts and embeddings on the same
  inputs, claims and resume, then junk, duplicates and a diversity-balanced selection.
"""
