"""Privacy: differential privacy (``dp``: clipping, noise, accounting over Google's
dp-accounting) and secure aggregation (``secagg``: SecAgg+ on ``cryptography``)."""
