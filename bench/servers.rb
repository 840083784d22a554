# frozen_string_literal: true

# The bench's servers come from the one server manager the suite, the chaos
# suite and the demo use (spec/support/servers.rb): Servers::Memcached as is,
# and Servers::Redis with the two counts the bench reads from redis.
require_relative "../spec/support/servers"

module Bench
  # A private redis-server for the redlock peer (Servers::Redis: no
  # persistence, a free loopback port, its own process group, killed by pid
  # at exit), plus what the bench counts on it.
  class RedisServer < Servers::Redis
    # Commands run only inside redlock-rb's Lua scripts: the client never
    # sends them itself, so they are not requests on the wire.
    SCRIPT_ONLY = %w[get set exists del pttl].freeze

    # Requests clients sent so far (INFO commandstats), without the commands
    # that ran inside Lua scripts and without INFO itself.
    # @return [Integer]
    def requests
      info("commandstats").sum do |name, stats|
        command = name.delete_prefix("cmdstat_")
        next 0 if command == name || SCRIPT_ONLY.include?(command) || command == "info"

        stats[/\Acalls=(\d+)/, 1].to_i
      end
    end

    # Commands processed so far (INFO stats total_commands_processed), script
    # internals included.
    # @return [Integer]
    def commands_processed
      info("stats").fetch("total_commands_processed").to_i
    end
  end
end
