"""Head modules the task types build on the pooled vector (B, H)."""

from __future__ import annotations

from torch import Tensor, nn

# BERT-family initializer_range; every HF BERT/RoBERTa/MiniLM/ELECTRA config uses 0.02.
HEAD_INIT_STD = 0.02


class LinearHead(nn.Module):
    """Dropout then a linear map: (B, H) -> (B, C), or (B,) when ``squeeze`` (one output)."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float, *, squeeze: bool = False) -> None:
        super().__init__()
        if squeeze and num_outputs != 1:
            raise ValueError(f"squeeze needs num_outputs == 1, got {num_outputs}")
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden_size, num_outputs)
        self.squeeze = squeeze
        nn.init.normal_(self.proj.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.proj.bias)

    def forward(self, pooled: Tensor) -> Tensor:  # (B, H)
        out = self.proj(self.dropout(pooled))  # (B, C)
        return out.squeeze(-1) if self.squeeze else out
