"""Load a TIPO ``.gguf`` file (llama.cpp's format) as transformers' ``LlamaForCausalLM``.

Why: the reference extension downloads ``*.gguf`` files and runs them with llama.cpp; users who
have them should not need another download, a compiler, or transformers' own GGUF loader
(4.41+, while A1111 pins 4.30.2). We parse the file ourselves (:mod:`.reader`); the pure-Python
``gguf`` package (optional: imported only when weights are read, :mod:`.checkpoint`) dequantises
every type it knows (F16, BF16, Q8_0, Q4_0…Q6_K, …). Works on transformers 4.30 to 5.x.

What llama.cpp's converter (``convert_hf_to_gguf.py``, ``LlamaModel``) changed is undone by
:mod:`.convert` (tensor names, the q/k rotary row order, config.json) and :mod:`.tokenizer`
(the SentencePiece model); :mod:`.load` builds the model from the result.
"""
