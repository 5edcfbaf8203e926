"""Bit allocation search (paper Sec. 3.2-3.3, Algorithm 1): fidelity, budget, environment, agents."""
