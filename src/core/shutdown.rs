//! The end of a graceful shutdown: the [`Stop`] message every long-lived actor answers.
//! Owns no state; never decides when to stop (that is `app.rs`).

use actix::Message;

/// Stops an actor (the end of a graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Implements `Handler<Stop>` (stop the actor) for each listed actor.
#[macro_export]
macro_rules! stoppable {
    ($($actor:ty),*) => {$(
        impl actix::Handler<$crate::core::shutdown::Stop> for $actor {
            type Result = ();
            fn handle(&mut self, _: $crate::core::shutdown::Stop, ctx: &mut Self::Context) {
                actix::ActorContext::stop(ctx);
            }
        }
    )*};
}
