//! Placeholder with the agreed API; replaced by the real filters.
#![allow(dead_code, unused_variables)]
use crate::l7::matcher::CompiledRule;
pub fn apply_request_filters(rule: &CompiledRule, matched_prefix: Option<&str>, parts: &mut http::request::Parts) {}
pub fn apply_response_filters(rule: &CompiledRule, headers: &mut http::HeaderMap) {}
pub fn redirect_response(redirect: &crate::config::RequestRedirect, matched_prefix: Option<&str>, parts: &http::request::Parts) -> http::Response<()> {
    http::Response::new(())
}
pub fn modify_headers(modifier: &crate::config::HeaderModifier, headers: &mut http::HeaderMap) {}
