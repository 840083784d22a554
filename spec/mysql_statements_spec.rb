# frozen_string_literal: true

require "spec_helper"
require "timeout"

# What a waited :mysql take asks of the server, counted with the server's
# own Com_select (each GET_LOCK, RELEASE_LOCK and holder read is one
# SELECT): a try, then one GET_LOCK that waits in the server. Who holds the
# lock is read only when the call ends without it (ext/mega_mutex/lock.c,
# wait_in_store). The spec's own looks at the server use SHOW statements,
# which Com_select does not count.
RSpec.describe "statements of a waited :mysql take" do
  let(:db) { Servers::MariaDB.shared }
  let(:key) { "#{@namespace}:k" }

  before { skip "mariadbd is not installed" unless Servers::MariaDB.available? }
  after { @clients&.each { |c| c.close unless c.closed? } }

  def client
    c = MegaMutex::Native::Client.mysql("127.0.0.1", db.port, nil, "root", nil, nil, 2000, 2000, 30)
    (@clients ||= []) << c
    c
  end

  # A stand-in for Lock::Hold: _acquire records @version, @holder etc. on it.
  def take(client, key, token, timeout)
    state = Object.new
    [client._acquire(state, key, token, 30, timeout, 0.002, 0.05), state]
  end

  def selects
    Integer(db.sql("SHOW GLOBAL STATUS LIKE 'Com_select'").dig(0, 1))
  end

  def waiting_in_get_lock?
    db.sql("SHOW FULL PROCESSLIST").any? { |row| row[7].to_s.include?("GET_LOCK") }
  end

  # Opens each client's session (its set-up statements are not the take's).
  def warm(*clients)
    clients.each_with_index do |c, i|
      taken, state = take(c, "#{key}-warm#{i}", "warm-#{i}", 0)
      expect(taken).to be(true)
      expect(c._release("#{key}-warm#{i}", "warm-#{i}", state.instance_variable_get(:@version))).to be(true)
    end
  end

  it "costs a try and one waiting GET_LOCK, with no read of the holder, when the lock comes in time" do
    holder = client
    waiter = client
    warm(holder, waiter)
    taken, held = take(holder, key, "tok-holder", 0)
    expect(taken).to be(true)
    before = selects
    thread = Thread.new { take(waiter, key, "tok-waiter", 30) }
    wait_for(within: 30, message: "the waiter to block in GET_LOCK") { waiting_in_get_lock? }
    expect(holder._release(key, "tok-holder", held.instance_variable_get(:@version))).to be(true)
    taken, state = Timeout.timeout(10) { thread.value }
    expect(taken).to be(true)
    # the waiter's try, its waiting GET_LOCK, the holder's RELEASE_LOCK
    expect(selects - before).to eq(3)
    expect(waiter._release(key, "tok-waiter", state.instance_variable_get(:@version))).to be(true)
  end

  it "still names the holder when a waited take times out" do
    holder = client
    waiter = client
    taken, = take(holder, key, "tok-holder", 0)
    expect(taken).to be(true)
    taken, state = take(waiter, key, "tok-waiter", 0.2)
    expect(taken).to be(false)
    # the holder's token where the server lists named locks, else its connection
    expect(state.instance_variable_get(:@holder)).to match(/\Atok-holder\z|\Amysql-connection:\d+\z/)
  end
end
