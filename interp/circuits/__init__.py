"""Circuit discovery over model components: tasks, patching, attribution, EAP, EAP-IG, ACDC, discrete-SAE circuits,
their evaluation against ground truth, and the graph format every method writes."""
