"""The batch pseudo-labeling job: a frozen teacher labels a large unlabeled corpus into WebDataset shards.

    accelerate launch distill/pseudolabel.py --teacher T --input I --output O [options]

Modules, in the order data flows through them:

- ``options``: the job's options (YAML + flags), and which of them define the output (resume check).
- ``inputs``: input discovery (directory, glob, list file, WebDataset tars, Hugging Face dataset)
  into a frozen, memory-mapped listing; keys; the deterministic split into units (one unit = one
  output shard) and of units across processes.
- ``decode``: one input -> upright RGB at the inference size (JPEG draft decoding, fast resize)
  plus the bytes of the image to store; bad inputs become error records, never exceptions.
- ``stream``: the DataLoader side: workers stream their units, decode, group by inference size
  (aspect-ratio buckets) and emit batches of one size.
- ``tta``: batched inference with test-time augmentation and the agreement confidence.
- ``codec``: 16-bit log/linear quantisation of the prediction, 8-bit confidence, PNG encoding.
- ``shards``: tar shard writing with per-shard index files, ``decode_sample`` (the one function
  that turns a stored sample back into a ``Sample``) and ``ShardReader`` (random access for training).
- ``writer``: the background thread that resizes predictions back, encodes and writes shards.
- ``claims``: owner ids, claims on units, clean-up of abandoned temporary files: launches sharing an output.
- ``job``: the run: job file, claims and resume, the process's loop, stop and failure, progress, manifest.
- ``status``: ``pseudolabel.py status O``: units done / claimed / pending, rate and ETA.
"""
