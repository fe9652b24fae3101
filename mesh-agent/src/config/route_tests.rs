//! Tests of the L7 configuration (route_checks).
