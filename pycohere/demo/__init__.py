"""The bundled demo model: a small Cohere-architecture model trained in this project (``PROVENANCE.md``),
so that everything works offline. Data only; ``DEMO_MODEL`` is the folder to load."""
import os as _os

DEMO_MODEL = _os.path.dirname(_os.path.abspath(__file__))
