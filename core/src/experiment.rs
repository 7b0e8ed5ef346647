//! Experiments as values.
