//! The Pingora hooks. Each one hands over to a pipeline phase; the order of phases is read in
//! `pipeline/mod.rs`, not here.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::modules::http::HttpModules;
use pingora::prelude::{HttpPeer, RequestHeader, Session};
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp};
use pingora::{Error, ErrorType, Result};

use crate::pipeline::{self, Admission, RequestCtx};
use crate::state::reload::Live;

pub(crate) struct LicenseProxy {
    pub(crate) live: Arc<Live>,
}

impl LicenseProxy {
    fn count_retry(&self, ctx: &RequestCtx, retry: Option<pipeline::RetryReason>) {
        if let Some(reason) = retry {
            self.live
                .lifetime()
                .metrics
                .upstream_retries
                .with_label_values(&[ctx.provider_name(), reason.as_str()])
                .inc();
        }
    }
}

#[async_trait]
impl ProxyHttp for LicenseProxy {
    type CTX = RequestCtx;

    /// Pingora adds a response compression module (off) to every request by default; licenses
    /// are small binaries that are never compressed, so no module runs at all.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.live.current())
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.live
            .lifetime()
            .license_connections
            .request_started(session.client_addr());
        ctx.connection_busy = true;
        let server = &ctx.state.config.server;
        // A player that stops reading its answer must not hold the stream (and a connection
        // slot) forever; Pingora sets no write timeout.
        session.set_write_timeout(Some(server.answer_write_timeout));
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(server.keepalive_timeout.as_secs()));
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let answer = match pipeline::admit(&ctx.state.clone(), session, ctx).await {
            Ok(Admission::Forward(plan)) => {
                ctx.plan = Some(*plan);
                return Ok(false);
            }
            Ok(Admission::Answer(answer)) => answer,
            Err(problem) => pipeline::problem_answer(&problem, ctx),
        };
        pipeline::answer(&ctx.state.clone(), session, ctx, answer).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        match pipeline::choose_peer(&ctx.state.clone(), ctx).await {
            Ok(peer) => Ok(Box::new(peer)),
            Err(problem) => {
                ctx.answer.pending_problem = Some(problem);
                Error::e_explain(ErrorType::ConnectNoRoute, "no upstream attempt possible")
            }
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        pipeline::end_stream_turn(ctx);
        self.live
            .lifetime()
            .metrics
            .upstream_connections
            .with_label_values(&[ctx.provider_name(), if reused { "true" } else { "false" }])
            .inc();
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Pingora has already chosen the upstream HTTP version; the rebuilt header keeps it.
        let version = upstream_request.version;
        *upstream_request = pipeline::upstream_request(ctx)?;
        upstream_request.set_version(version);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        pipeline::end_stream_turn(ctx);
        let retry = pipeline::connect_failed(&ctx.state.clone(), ctx, session);
        self.count_retry(ctx, retry);
        e.set_retry(retry.is_some() || ctx.forward.failing_over.is_some());
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        // Pingora's own judgement (and its refusal to retry any POST) is replaced wholesale:
        // see `pipeline::attempt_failed`.
        let mut e = e.more_context(format!("peer {peer}"));
        pipeline::end_stream_turn(ctx);
        let retry = pipeline::attempt_failed(&ctx.state.clone(), ctx, session, &e);
        self.count_retry(ctx, retry);
        e.set_retry(retry.is_some() || ctx.forward.failing_over.is_some());
        e
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        pipeline::upstream_body(ctx, body);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let hold = pipeline::inspect_response(
            &ctx.state.clone(),
            ctx,
            upstream_response.status.as_u16(),
            &upstream_response.headers,
        )
        .await?;
        if hold {
            session.hold_response();
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        pipeline::vendor_answer_headers(&ctx.state.clone(), ctx, response)
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if pipeline::capture_answer(ctx, body.as_ref(), end_of_stream, false)?
            == pipeline::Release::Now
        {
            session.release_held_response();
        }
        Ok(None)
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        _trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        pipeline::capture_answer(ctx, None, false, true).map(drop)
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(header) = pipeline::answer_body(&ctx.state.clone(), ctx, body, end_of_stream)? {
            session.replace_held_response_header(header);
        }
        Ok(None)
    }

    async fn response_trailer_filter(
        &self,
        session: &mut Session,
        _trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Bytes>> {
        let (body, header) = pipeline::answer_trailers(&ctx.state.clone(), ctx)?;
        if let Some(header) = header {
            session.replace_held_response_header(header);
        }
        Ok(body)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        pipeline::fail(&ctx.state.clone(), session, ctx, e).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        pipeline::settle(&ctx.state.clone(), ctx, e).await;
        pipeline::record(&ctx.state.clone(), ctx, e);
        if std::mem::take(&mut ctx.connection_busy) {
            self.live
                .lifetime()
                .license_connections
                .request_finished(session.client_addr());
        }
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        // Retries are counted in metrics and failovers logged by the pipeline; Pingora's own
        // line would add the request URI, which may hold a user token in its query.
        true
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // The access line carries the outcome; Pingora's own line would add the request URI,
        // which may hold a user token in its query.
        true
    }

    fn request_summary(&self, _session: &Session, ctx: &RequestCtx) -> String {
        format!(
            "request {} drm {} provider {}",
            ctx.request_id,
            ctx.admitted.label,
            ctx.provider_name()
        )
    }
}
