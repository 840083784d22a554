# frozen_string_literal: true

ContractBackend.register(
  :memcached,
  processes: true,
  configure: lambda { |c|
    c.backend = :memcached
    c.memcache_servers = [SpecHelpers.memcached.address]
  },
  # As a flush_all, an eviction or a restart would.
  lose_lease: ->(lock) { SpecHelpers.memcached.delete(lock.key) or raise "#{lock.key} was not in memcached" }
)
