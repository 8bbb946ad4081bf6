//! Tests of the Check decision.
