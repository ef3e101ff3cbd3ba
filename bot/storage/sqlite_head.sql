-- opsbot SQLite schema at revision 0008 (written by `python -m bot.storage.migrate`)
BEGIN TRANSACTION;
CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
INSERT INTO "alembic_version" VALUES('0008');
CREATE TABLE alerts (
	fingerprint TEXT NOT NULL, 
	id VARCHAR(16) NOT NULL, 
	source VARCHAR(16) NOT NULL, 
	group_key TEXT NOT NULL, 
	name TEXT NOT NULL, 
	severity TEXT NOT NULL, 
	summary TEXT NOT NULL, 
	labels TEXT NOT NULL, 
	since DATETIME NOT NULL, 
	last_posted_at DATETIME, 
	post_key TEXT, 
	acked_by TEXT, 
	acked_at DATETIME, 
	PRIMARY KEY (fingerprint)
);
CREATE TABLE approvals (
	id VARCHAR(16) NOT NULL, 
	request_id TEXT NOT NULL, 
	action TEXT NOT NULL, 
	args TEXT NOT NULL, 
	argv TEXT NOT NULL, 
	requester TEXT NOT NULL, 
	requester_id TEXT NOT NULL, 
	platform TEXT NOT NULL, 
	workspace TEXT NOT NULL, 
	channel TEXT NOT NULL, 
	thread TEXT, 
	created_at DATETIME NOT NULL, 
	expires_at DATETIME NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	decided_by TEXT, 
	decided_at DATETIME, 
	reason TEXT, 
	PRIMARY KEY (id)
);
CREATE TABLE audit_anchor (
	id INTEGER NOT NULL, 
	seq BIGINT NOT NULL, 
	hash VARCHAR(64) NOT NULL, 
	applied_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT ck_audit_anchor_single_row CHECK (id = 1)
);
CREATE TABLE audit_chain_head (
	id INTEGER NOT NULL, 
	seq BIGINT NOT NULL, 
	hash VARCHAR(64) NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT ck_audit_chain_head_single_row CHECK (id = 1)
);
INSERT INTO "audit_chain_head" VALUES(1,0,'0000000000000000000000000000000000000000000000000000000000000000');
CREATE TABLE audit_log (
	seq INTEGER NOT NULL, 
	prev_hash VARCHAR(64) NOT NULL, 
	hash VARCHAR(64) NOT NULL, 
	request_id TEXT NOT NULL, 
	at DATETIME NOT NULL, 
	stage VARCHAR(16) NOT NULL, 
	kind TEXT NOT NULL, 
	platform TEXT NOT NULL, 
	workspace TEXT NOT NULL, 
	channel TEXT NOT NULL, 
	thread TEXT, 
	user_id TEXT NOT NULL, 
	principal TEXT, 
	command TEXT, 
	raw_text TEXT NOT NULL, 
	args TEXT NOT NULL, 
	decision VARCHAR(8), 
	rule TEXT, 
	approvers TEXT NOT NULL, 
	status TEXT NOT NULL, 
	exit_code INTEGER, 
	duration_ms DOUBLE, 
	output_digest TEXT, 
	output_excerpt TEXT, 
	error TEXT, 
	detail TEXT NOT NULL, replica TEXT DEFAULT '' NOT NULL, key_id VARCHAR(16), 
	PRIMARY KEY (seq)
);
CREATE TABLE delivered_events (
	platform TEXT NOT NULL, 
	event_id TEXT NOT NULL, 
	at DATETIME NOT NULL, 
	PRIMARY KEY (platform, event_id)
);
CREATE TABLE outbox (
	id INTEGER NOT NULL, 
	platform TEXT NOT NULL, 
	workspace TEXT NOT NULL, 
	channel TEXT NOT NULL, 
	thread TEXT, 
	"key" TEXT, 
	coalesce BOOLEAN NOT NULL, 
	reply TEXT NOT NULL, 
	attempts INTEGER NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	created_at DATETIME NOT NULL, 
	next_at DATETIME NOT NULL, 
	last_error TEXT, owner TEXT, lease_until DATETIME, 
	PRIMARY KEY (id)
);
CREATE TABLE shared_state (
	"key" TEXT NOT NULL, 
	value TEXT NOT NULL, 
	expires_at DATETIME, 
	PRIMARY KEY ("key")
);
CREATE TABLE silences (
	id VARCHAR(16) NOT NULL, 
	matchers TEXT NOT NULL, 
	reason TEXT NOT NULL, 
	created_by TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	ends_at DATETIME NOT NULL, 
	ended_by TEXT, 
	ended_at DATETIME, notify_platform TEXT, notify_workspace TEXT, notify_channel TEXT, notify_thread TEXT, told_at DATETIME, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_audit_log_principal_at ON audit_log (principal, at);
CREATE INDEX ix_audit_log_command_at ON audit_log (command, at);
CREATE INDEX ix_audit_log_status_at ON audit_log (status, at);
CREATE INDEX ix_audit_log_at ON audit_log (at);
CREATE INDEX ix_audit_log_request_id ON audit_log (request_id);
CREATE INDEX ix_approvals_state_expires ON approvals (state, expires_at);
CREATE INDEX ix_delivered_events_at ON delivered_events (at);
CREATE INDEX ix_outbox_state_id ON outbox (state, id);
CREATE INDEX ix_alerts_id ON alerts (id);
CREATE INDEX ix_silences_ends_at ON silences (ends_at);
CREATE INDEX ix_outbox_lease ON outbox (state, lease_until);
COMMIT;
