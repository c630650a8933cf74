//! The control-socket protocol (to be written).
