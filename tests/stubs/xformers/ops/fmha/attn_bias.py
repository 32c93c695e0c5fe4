class AttentionBias:
    pass


class LowerTriangularMask(AttentionBias):
    """Causal mask (top-left aligned)."""
