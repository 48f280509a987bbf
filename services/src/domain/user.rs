//! The `User` aggregate: a login identity.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use onbehalf_events::values::{Email, Name};
use onbehalf_events::{Actor, UserEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Command, DomainError, KeyChanges, UniqueKey, UniqueKeys, EMAIL_SCOPE};

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
    /// Erase the user (the right to be forgotten): its personal data becomes unreadable
    /// everywhere in the log, its email free to register again.
    ///
    /// The user itself may erase itself; any other user may not. Services and staff reach this
    /// command only after the caller's scope was checked at the boundary. Refused while the user
    /// still owns a client account (ownership must be transferred first) or is a member of one
    /// (it must leave first), so that no client account is left acting through an erased user.
    Erase {
        /// The client accounts the user owns, as the caller found them.
        owned_accounts: Vec<Uuid>,
        /// The client accounts the user is a member of, as the caller found them.
        member_accounts: Vec<Uuid>,
    },
}

/// A user's write-model state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Set once registered.
    pub user_id: Option<Uuid>,
    /// The login email; the erased placeholder once the user was erased and the stream folded
    /// again.
    pub email: Option<Email>,
    /// Whether the user was erased.
    #[serde(default)]
    pub erased: bool,
}

impl User {
    /// Whether the user is registered and not erased: the only state in which it may act.
    pub fn is_active(&self) -> bool {
        self.user_id.is_some() && !self.erased
    }
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
            UserCommand::Erase {
                owned_accounts,
                member_accounts,
            } => {
                let Some(user_id) = self.user_id else {
                    return Err(DomainError::NotFound("user"));
                };
                if let Actor::User(caller) = command.context.actor {
                    if caller != user_id {
                        return Err(DomainError::denied("a user may erase only itself"));
                    }
                }
                if self.erased {
                    return Err(DomainError::precondition("user is already erased"));
                }
                if let Some(account_id) = owned_accounts.first() {
                    return Err(DomainError::precondition(format!(
                        "user still owns client account {account_id}: transfer its ownership \
                         first"
                    )));
                }
                if let Some(account_id) = member_accounts.first() {
                    return Err(DomainError::precondition(format!(
                        "user is still a member of client account {account_id}: leave it first"
                    )));
                }
                sink.write(UserEvent::UserErased { user_id }, self).await;
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
            UserEvent::UserErased { .. } => {
                self.erased = true;
            }
        }
    }
}

impl UniqueKeys for User {
    /// An erasure gives up the email's reservation, so the address can be registered again,
    /// and deletes the keys of the user and of its email.
    ///
    /// `self` is the state the events were applied to: the email is still the plain one it was
    /// folded with (the store deletes the keys only with these events).
    fn unique_keys(&self, events: &[Self::Event]) -> KeyChanges {
        let mut changes = KeyChanges::default();
        for event in events {
            if let UserEvent::UserErased { user_id } = event {
                if let Some(email) = self.email.as_ref().filter(|e| !e.is_erased()) {
                    changes.released.push(UniqueKey {
                        scope: EMAIL_SCOPE,
                        key: email.key(),
                    });
                    changes
                        .erased
                        .extend(onbehalf_events::personal::user_subjects(*user_id, email));
                } else {
                    // The email is gone already; the user's own key is still named.
                    changes.erased.push(onbehalf_events::user_stream(*user_id));
                }
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::domain::CommandContext;

    type UserTest = TestFramework<User>;

    fn user_id() -> Uuid {
        Uuid::parse_str("5d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d").unwrap()
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_741_000_000, 0).unwrap()
    }

    fn registered() -> UserEvent {
        UserEvent::UserRegistered {
            user_id: user_id(),
            email: Email::parse("designer@yourcompany.com").unwrap(),
            display_name: Name::parse("Web Designer").unwrap(),
        }
    }

    fn erase_by(actor: Actor, owned: Vec<Uuid>, member: Vec<Uuid>) -> Command<UserCommand> {
        Command {
            context: CommandContext { actor, now: now() },
            body: UserCommand::Erase {
                owned_accounts: owned,
                member_accounts: member,
            },
        }
    }

    fn abc() -> Uuid {
        Uuid::parse_str("0b6f1e2d-3c4b-4a59-8687-a1b2c3d4e5f6").unwrap()
    }

    #[test]
    fn a_user_erases_itself() {
        UserTest::with(())
            .given(vec![registered()])
            .when(erase_by(Actor::User(user_id()), vec![], vec![]))
            .then_expect_events(vec![UserEvent::UserErased { user_id: user_id() }]);
    }

    #[test]
    fn a_service_erases_a_user() {
        UserTest::with(())
            .given(vec![registered()])
            .when(erase_by(
                Actor::Service("privacy-desk".into()),
                vec![],
                vec![],
            ))
            .then_expect_events(vec![UserEvent::UserErased { user_id: user_id() }]);
    }

    #[test]
    fn another_user_may_not_erase_a_user() {
        UserTest::with(())
            .given(vec![registered()])
            .when(erase_by(Actor::User(Uuid::new_v4()), vec![], vec![]))
            .then_expect_error(DomainError::denied("a user may erase only itself"));
    }

    #[test]
    fn an_unregistered_user_cannot_be_erased() {
        UserTest::with(())
            .given_no_previous_events()
            .when(erase_by(Actor::User(user_id()), vec![], vec![]))
            .then_expect_error(DomainError::NotFound("user"));
    }

    #[test]
    fn an_erased_user_cannot_be_erased_again() {
        UserTest::with(())
            .given(vec![
                registered(),
                UserEvent::UserErased { user_id: user_id() },
            ])
            .when(erase_by(Actor::User(user_id()), vec![], vec![]))
            .then_expect_error(DomainError::precondition("user is already erased"));
    }

    #[test]
    fn an_owner_must_transfer_ownership_before_erasure() {
        UserTest::with(())
            .given(vec![registered()])
            .when(erase_by(Actor::User(user_id()), vec![abc()], vec![]))
            .then_expect_error(DomainError::precondition(format!(
                "user still owns client account {}: transfer its ownership first",
                abc()
            )));
    }

    #[test]
    fn a_member_must_leave_before_erasure() {
        UserTest::with(())
            .given(vec![registered()])
            .when(erase_by(Actor::User(user_id()), vec![], vec![abc()]))
            .then_expect_error(DomainError::precondition(format!(
                "user is still a member of client account {}: leave it first",
                abc()
            )));
    }

    #[test]
    fn an_erased_user_is_no_longer_active() {
        let mut user = User::default();
        user.apply(registered());
        assert!(user.is_active());
        user.apply(UserEvent::UserErased { user_id: user_id() });
        assert!(!user.is_active());
        assert!(user.erased);
    }

    #[test]
    fn erasure_releases_the_email_and_deletes_both_keys() {
        let mut user = User::default();
        user.apply(registered());
        let email = Email::parse("designer@yourcompany.com").unwrap();
        let changes = user.unique_keys(&[UserEvent::UserErased { user_id: user_id() }]);
        assert_eq!(
            changes,
            KeyChanges {
                claimed: vec![],
                released: vec![UniqueKey {
                    scope: EMAIL_SCOPE,
                    key: "designer@yourcompany.com".into(),
                }],
                erased: vec![
                    format!("user-{}", user_id()),
                    onbehalf_events::personal::email_subject(&email),
                ],
            }
        );
    }

    #[test]
    fn registration_claims_and_releases_nothing_here() {
        // The email's reservation of a registration is claimed by the caller of the command.
        let user = User::default();
        assert_eq!(user.unique_keys(&[registered()]), KeyChanges::default());
    }
}
