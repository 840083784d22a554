# frozen_string_literal: true

# MariaDB named locks (GET_LOCK), on the suite's mariadbd (started the first
# time a :mysql example runs). A lease is lost by killing the holder's
# session from another connection, as a DBA's KILL, a crash of the session's
# server thread or a network cut would.
ContractBackend.register(
  :mysql,
  processes: true,
  configure: lambda { |c|
    c.backend = :mysql
    c.mysql_url = Servers::MariaDB.shared.url
  },
  lose_lease: lambda { |lock|
    db = Servers::MariaDB.shared
    id = db.lock_holder(MegaMutex::Native::Client._mysql_lock_name(lock.key)) or raise "#{lock.key} was not held in MariaDB"
    db.sql("KILL CONNECTION #{id}")
  }
)
