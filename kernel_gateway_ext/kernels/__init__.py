"""The kernel store: kernels with owners, limits, activity and state, shared by every dialect."""
