"""Other tools' formats: SAELens and sparsify dictionaries, Neuronpedia feature JSON."""

from interp.formats.interop import convert, export_dictionary, import_dictionary
from interp.formats.neuronpedia import export_neuronpedia

__all__ = ["convert", "export_dictionary", "export_neuronpedia", "import_dictionary"]
