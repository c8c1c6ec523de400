"""Which TIPO models exist, where their files come from, and how one is loaded.

Models come from the Hugging Face cache through ``huggingface_hub.snapshot_download`` (progress
bars, resume, ``HF_HOME``/``HF_HUB_OFFLINE`` honoured by the hub itself) or from a local folder.
Only ``LlamaForCausalLM`` folders with safetensors weights are loaded, never remote code: the
TIPO v1 models are LLaMA (format sheet, "Models"). torch, transformers and huggingface_hub are
imported only when a model is resolved or loaded, so importing any of these modules stays cheap.

:mod:`.registry` (the known repos) ← :mod:`.files` (what a model on disk must hold) ←
:mod:`.download` (the Hub) ← :mod:`.resolve` (a user's name → a path); :mod:`.device` picks
device and dtype, :mod:`.load` builds the model, :mod:`.cache` keeps loaded ones.
"""
