"""Curation of an unlabeled corpus before labeling it (``-m pseudolabel.curation``): per-image facts and
embeddings (``facts``, ``embed``), junk, duplicate groups, clusters and a balanced selection
(``groups``, ``select``), and the report (``report``); ``config`` holds the options, ``cli`` the command."""
