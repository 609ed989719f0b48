"""The specification: the maths of one Cohere / Cohere2 forward pass in NumPy, as short pure functions
(``layers``), with RoPE (``rope``), the KV cache (``cache``), the weight interface and dense weights
(``weights``), the typed parameters and their one name/shape table (``params``) and the tap names (``taps``).

May import: ``pycohere.io``, ``pycohere.config`` and below. Never a kernel: the fast twins are chosen by
``pycohere.model``.
"""
