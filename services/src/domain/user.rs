//! The `User` aggregate: a login identity.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use onbehalf_events::values::{Email, Name};
use onbehalf_events::UserEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Command, DomainError};

/// Commands on a user.
#[derive(Clone, Debug, PartialEq)]
pub enum UserCommand {
    /// Register a new user. Email uniqueness is enforced by the store's reservation.
    Register {
        /// The new user's id.
        user_id: Uuid,
        /// The login email.
        email: Email,
        /// The display name.
        display_name: Name,
    },
}

/// A user's write-model state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Set once registered.
    pub user_id: Option<Uuid>,
    /// The login email.
    pub email: Option<Email>,
}

impl Aggregate for User {
    const TYPE: &'static str = onbehalf_events::stream_type::USER;
    type Command = Command<UserCommand>;
    type Event = UserEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command.body {
            UserCommand::Register {
                user_id,
                email,
                display_name,
            } => {
                if self.user_id.is_some() {
                    return Err(DomainError::AlreadyExists(
                        "user is already registered".into(),
                    ));
                }
                sink.write(
                    UserEvent::UserRegistered {
                        user_id,
                        email,
                        display_name,
                    },
                    self,
                )
                .await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered { user_id, email, .. } => {
                self.user_id = Some(user_id);
                self.email = Some(email);
            }
        }
    }
}
