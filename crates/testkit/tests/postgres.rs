//! The PostgreSQL test cluster starts, answers over TCP with its password, and stops.

#[test]
fn a_throwaway_cluster_answers_over_tcp() {
    let mut pg = testkit::Postgres::start().unwrap();
    assert!(pg.url.starts_with("postgres://idbridge@127.0.0.1:"), "{}", pg.url);
    let version = pg.psql("SHOW server_version").unwrap();
    assert!(version.trim().starts_with("15."), "{version}");
    pg.psql("CREATE TABLE t (name text); INSERT INTO t VALUES ('Zoë')").unwrap();
    assert_eq!(pg.psql("SELECT name FROM t").unwrap().trim(), "Zoë");
    assert!(std::fs::read_to_string(pg.password_file()).unwrap().contains("pg-secret"));
    pg.stop().unwrap();
    assert!(pg.psql("SELECT 1").is_err(), "stopped");
}
