# frozen_string_literal: true

require "spec_helper"
require "timeout"
require_relative "support/quorum_servers"

# A program the application starts (system, spawn, backticks) while it holds
# a lock must not inherit MegaMutex's connections. For a session store the
# connection is the lock: a holder killed with kill -9 would leave its lock
# held for as long as the program it started runs, since the server sees the
# session close only when the last process with its socket lets go.
RSpec.describe "Programs started while a lock is held" do
  # A fresh process (started with close_others, so it inherits nothing of
  # this one's) that configures `settings`, takes a lock and starts a
  # program that counts its own sockets; returns that count.
  def sockets_seen_by_a_program_started_inside_a_lock(settings)
    script = configured_script(**settings) + <<~RUBY
      count = 'print Dir.children("/proc/self/fd").count { |fd| File.readlink("/proc/self/fd/" + fd).start_with?("socket:") rescue false }'
      MegaMutex.with_distributed_mutex("exec") do
        MegaMutex.with_distributed_mutex("exec-2") { print IO.popen([RbConfig.ruby, "-e", count], &:read) }
      end
    RUBY
    out, err, status = Open3.capture3(RbConfig.ruby, "-e", script, close_others: true)
    expect(status).to be_success, "#{out}\n#{err}"
    Integer(out)
  end

  it "inherits no memcached connection" do
    expect(sockets_seen_by_a_program_started_inside_a_lock(memcache_servers: [SpecHelpers.memcached.address])).to eq(0)
  end

  it "inherits no connection to a quorum server" do
    servers = QuorumServers.shared.map(&:address)
    settings = { backend: :quorum, memcache_servers: servers, quorum_max_ttl: QuorumServers::MAX_TTL, lock_ttl: QuorumServers::MAX_TTL }
    expect(sockets_seen_by_a_program_started_inside_a_lock(settings)).to eq(0)
  end

  describe "backend :mysql" do
    include_context "backend :mysql on the suite's MariaDB"

    it "inherits no MariaDB session, by TCP or by socket" do
      expect(sockets_seen_by_a_program_started_inside_a_lock(backend: :mysql, mysql_url: db.url)).to eq(0)
      expect(sockets_seen_by_a_program_started_inside_a_lock(backend: :mysql, mysql_url: db.socket_url)).to eq(0)
    end

    it "frees the lock as soon as its holder is killed with kill -9, while a program it started still runs" do
      reader, writer = IO.pipe
      script = configured_script(backend: :mysql, mysql_url: db.url) + <<~RUBY
        MegaMutex.with_distributed_mutex("orphan") do
          program = Process.spawn("sleep", "600", pgroup: true)
          $stdout.puts program
          $stdout.flush
          sleep
        end
      RUBY
      holder = Process.spawn(RbConfig.ruby, "-e", script, out: writer, close_others: true)
      writer.close
      program = Integer(Timeout.timeout(30) { reader.gets })
      begin
        expect(MegaMutex::Lock.new("orphan").try_lock).to be(false)
        Process.kill(:KILL, holder)
        Process.wait(holder)
        holder = nil
        # The session's lease (lock_ttl, 30 s by default) is far longer than
        # this: only the server seeing the session close lets the lock go.
        expect(MegaMutex.with_distributed_mutex("orphan", timeout: 10) { :ran }).to eq(:ran)
      ensure
        if holder
          Process.kill(:KILL, holder)
          Process.wait(holder)
        end
        Process.kill(:KILL, -program)
        Process.wait(program) rescue Errno::ECHILD # rubocop:disable Style/RescueModifier -- not our child
        reader.close
      end
    end
  end
end
