"""The Interference Matrix paper's pipeline: the sweep (one model per language and per pair, composing the training
wing's components), the loss and interference matrices computed once from its results, their analyses, the Hub
dataset, and Section 5's downstream check."""
