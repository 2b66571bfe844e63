"""The model: a Hugging Face encoder cut at the sharing depth k, per-task layers and heads."""
